"""Batched fetching and the loader options of ``datasets.<name>``.

A dataset that can be read a batch per call (``blobs``, a ``TensorDataset``, a ``Subset`` of either) is
read so; the batches, and so everything a seeded run computes, stay those of reading sample by sample.
A dataset with ``__getitems__`` is asked once per batch. The options that only workers use are refused
without workers, with the field's path.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import fit, make_trainer, tiny_config, train
from torch.utils.data import Dataset, Subset, TensorDataset

from noether_core.cli import main
from noether_core.config.schema import DatasetConfig
from noether_core.io.checkpoints import load_checkpoint
from noether_core.run.counter import Counter, RunEnd, advance
from noether_core.run.data import LoaderOptions, TrainBatches, sequential_loader
from noether_core.run.datasets import Blobs
from noether_core.run.distributed import DistInfo
from noether_core.run.fetching import batch_reader


def epoch_batches(
    dataset: Dataset[Any],
    options: LoaderOptions,
    *,
    epochs: int = 2,
    micro: int = 4,
    steps: int = 2,
    updates_per_epoch: int = 5,
    start_update: int = 0,
    dist: DistInfo | None = None,
) -> list[list[torch.Tensor]]:
    """Every micro-batch TrainBatches gives for ``epochs`` epochs, from ``start_update`` on."""
    batches = TrainBatches(
        dataset,
        micro_batch_size=micro,
        accumulation_steps=steps,
        updates_per_epoch=updates_per_epoch,
        seed=11,
        dist_info=dist or DistInfo(),
        options=options,
    )
    counter = Counter(
        end=RunEnd("epoch", epochs),
        updates_per_epoch=updates_per_epoch,
        effective_batch_size=micro * steps,
        update=start_update,
    )
    seen = []
    for update in batches.updates(counter):
        seen.extend(batch for batch, _ in update)
        advance(counter)
    return seen


def assert_same_batches(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert type(x) is type(y) is list  # what default_collate makes of (x, y) samples
        assert len(x) == len(y)
        for tx, ty in zip(x, y, strict=True):
            assert tx.dtype == ty.dtype
            assert tx.shape == ty.shape
            assert torch.equal(tx, ty)


def wide_tensors(size: int = 50) -> TensorDataset:
    gen = torch.Generator().manual_seed(5)
    return TensorDataset(
        torch.randn(size, 3, 2, generator=gen),
        torch.randint(0, 9, (size,), generator=gen),
        torch.arange(size),
    )


# ------------------------------------------------------------------------------ the same batches


@pytest.mark.parametrize(
    "dataset",
    [Blobs(size=64, dim=3), wide_tensors(), Subset(wide_tensors(60), list(range(59, 3, -1)))],
    ids=["blobs", "tensors", "subset"],
)
@pytest.mark.parametrize("start_update", [0, 3, 7])  # from the start, mid-epoch 0, mid-epoch 1
def test_batched_epochs_match_sample_by_sample(dataset: Dataset[Any], start_update: int) -> None:
    assert batch_reader(dataset) is not None
    batched = epoch_batches(dataset, LoaderOptions(), start_update=start_update)
    per_sample = epoch_batches(dataset, LoaderOptions(batched_fetch=False), start_update=start_update)
    assert len(batched) == (10 - start_update) * 2
    assert_same_batches(batched, per_sample)


def test_in_memory_path_gathers_in_chunks_with_the_same_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    import noether_core.run.data as data

    dataset = Blobs(size=64, dim=3)
    whole = epoch_batches(dataset, LoaderOptions())
    # a chunk of 3 samples rounds to one micro-batch of 4; 40 bytes is 2 samples of blobs(dim=3)
    monkeypatch.setattr(data, "CHUNK_BYTES", 40)
    assert_same_batches(epoch_batches(dataset, LoaderOptions()), whole)


def test_each_rank_gets_its_own_share_in_the_same_batches() -> None:
    dataset = Blobs(size=80, dim=2)
    shares = []
    for rank in (0, 1):
        dist = DistInfo(rank=rank, world_size=2)
        batched = epoch_batches(dataset, LoaderOptions(), dist=dist, epochs=1)
        per_sample = epoch_batches(dataset, LoaderOptions(batched_fetch=False), dist=dist, epochs=1)
        assert_same_batches(batched, per_sample)
        shares.append({float(x) for b in batched for x in b[0][:, 0]})
    # one epoch of 2 ranks x 5 updates x 2 micro-batches x 4 samples: all 80, each once
    assert not shares[0] & shares[1]
    assert len(shares[0] | shares[1]) == 80


def test_workers_read_the_same_batches() -> None:
    dataset = Blobs(size=64, dim=3)
    options = LoaderOptions(num_workers=1, persistent_workers=True, prefetch_factor=3)
    assert_same_batches(
        epoch_batches(dataset, options), epoch_batches(dataset, LoaderOptions(batched_fetch=False))
    )


@pytest.mark.parametrize("world_size", [1, 2])
def test_evaluation_loaders_read_batches_in_order(world_size: int) -> None:
    dataset = Subset(Blobs(size=23, dim=2), range(21))
    for rank in range(world_size):
        dist = DistInfo(rank=rank, world_size=world_size)
        batched = sequential_loader(dataset, 4, LoaderOptions(), dist)
        per_sample = sequential_loader(dataset, 4, LoaderOptions(batched_fetch=False), dist)
        assert len(batched) == len(per_sample)
        assert len(batched.dataset) == 21
        assert_same_batches(list(batched), list(per_sample))


def weights(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = load_checkpoint(path / "checkpoints" / "model_cp=final_model.th")[
        "state_dict"
    ]
    return state


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_seeded_run_trains_to_the_same_weights_either_way(tmp_path: Path) -> None:
    runs = {}
    for batched in (True, False):
        raw = tiny_config(max_epochs=2, accumulation_steps=2)
        raw["datasets"]["train"]["batched_fetch"] = batched
        trainer, _ = fit(tmp_path, raw, f"b{batched}", expect="completed")
        assert trainer._train_batches().batched is batched
        runs[batched] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert_same_weights(runs[True], runs[False])


def test_resume_mid_epoch_is_bit_identical_to_the_sample_by_sample_run(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=2)
    raw["datasets"]["train"]["kwargs"]["size"] = 200  # 12 updates per epoch, 8 samples left over
    reference = dict(raw, callbacks=[{"kind": "sample_plugins:SaveAtEnd"}])
    reference["datasets"] = {**raw["datasets"], "train": {**raw["datasets"]["train"], "batched_fetch": False}}
    assert train(tmp_path, reference, "a") == 0

    stopped = dict(
        raw,
        callbacks=[{"kind": "sample_plugins:SaveAtEnd"}, {"kind": "sample_plugins:SignalAt", "update": 17}],
    )
    assert train(tmp_path, stopped, "b") == 130
    assert main(["train", "--resume", str(tmp_path / "b"), "--set", "callbacks[1].update=0"]) == 0
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


# ------------------------------------------------------------------------------ __getitems__


class CountingDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Blobs that count how they are asked: ``__getitems__`` calls, and single samples."""

    calls: list[int] = []  # the batch sizes asked for, across instances
    singles = 0

    def __init__(self, size: int = 256) -> None:
        self.blobs = Blobs(size=size, seed=0)

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        CountingDataset.singles += 1
        return self.blobs[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        CountingDataset.calls.append(len(indices))
        return [self.blobs[i] for i in indices]


def counting(size: int = 256) -> CountingDataset:
    return CountingDataset(size)


def test_getitems_is_called_once_per_batch(tmp_path: Path) -> None:
    CountingDataset.calls.clear()
    CountingDataset.singles = 0
    raw = tiny_config(max_updates=6, max_epochs=None, accumulation_steps=2)
    raw["datasets"] = {
        "train": {"kind": "test_batched_fetch:counting"},
        "val": {"kind": "test_batched_fetch:counting", "kwargs": {"size": 20}},
    }
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "every_n_updates": 6, "dataset_key": "val", "batch_size": 8}
    ]
    trainer, _ = fit(tmp_path, raw, expect="completed")
    # 6 updates of 2 micro-batches of 8, then the evaluation: 8 + 8 + 4
    assert CountingDataset.calls == [8] * 12 + [8, 8, 4]
    assert CountingDataset.singles == 0
    assert trainer._train_batches().batched is False  # DataLoader itself asks __getitems__


# ------------------------------------------------------------------------------ the options


def test_pin_memory_only_pins_for_cuda() -> None:
    assert LoaderOptions.from_config(DatasetConfig(kind="blobs"), torch.device("cuda")).pin_memory
    assert not LoaderOptions.from_config(DatasetConfig(kind="blobs"), torch.device("cpu")).pin_memory
    off = DatasetConfig(kind="blobs", pin_memory=False)
    assert not LoaderOptions.from_config(off, torch.device("cuda")).pin_memory


def test_loader_options_reach_the_loaders() -> None:
    config = DatasetConfig(kind="blobs", num_workers=2, prefetch_factor=5)
    options = LoaderOptions.from_config(config, torch.device("cpu"))
    assert options.loader_kwargs(keep_workers=True) == {
        "num_workers": 2,
        "persistent_workers": True,
        "pin_memory": False,
        "prefetch_factor": 5,
    }
    assert options.loader_kwargs(keep_workers=False)["persistent_workers"] is False
    loader = sequential_loader(Blobs(size=8), 4, options, DistInfo())
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (2, 5, True)


def test_pin_memory_on_cpu_trains_the_same_without_a_warning(tmp_path: Path) -> None:
    plain, _ = fit(tmp_path, tiny_config(max_updates=5, max_epochs=None), "plain", expect="completed")
    raw = tiny_config(max_updates=5, max_epochs=None)
    for name in ("train", "val"):
        raw["datasets"][name]["pin_memory"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pinned, _ = fit(tmp_path, raw, "pinned", expect="completed")
    assert_same_weights(plain.model.state_dict(), pinned.model.state_dict())


def test_training_with_workers_matches_the_in_memory_path(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=2)
    raw["datasets"]["train"].update(num_workers=1, persistent_workers=True, prefetch_factor=4)
    workers, _ = fit(tmp_path, raw, "workers", expect="completed")
    in_memory, _ = fit(tmp_path, tiny_config(max_epochs=2), "memory", expect="completed")
    assert_same_weights(workers.model.state_dict(), in_memory.model.state_dict())


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"prefetch_factor": 2}, "datasets.train.prefetch_factor"),
        ({"persistent_workers": True}, "datasets.train.persistent_workers"),
        ({"num_workers": 2, "prefetch_factor": 0}, "datasets.train.prefetch_factor"),
    ],
)
def test_impossible_loader_options_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, Any], path: str
) -> None:
    raw = tiny_config()
    raw["datasets"]["train"].update(fields)
    config = tmp_path / "bad.yaml"
    config.write_text(json.dumps(raw))
    assert main(["config", "validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert path in err
    assert "Traceback" not in err
    if "num_workers" not in fields:
        assert "num_workers is 0" in err


def test_persistent_workers_false_without_workers_is_fine(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=2, max_epochs=None)
    raw["datasets"]["train"]["persistent_workers"] = False
    make_trainer(tmp_path, raw).fit()


@pytest.mark.cuda
def test_on_cuda_batches_are_pinned_and_train_as_unpinned(tmp_path: Path) -> None:
    runs = {}
    for pin in (True, False):
        raw = tiny_config(max_updates=6, max_epochs=None, device="cuda")
        raw["datasets"]["train"]["pin_memory"] = pin
        trainer = make_trainer(tmp_path, raw, f"pin{pin}")
        first, _ = next(iter(trainer._train_batches().updates(trainer.counter)))[0]
        assert first[0].is_pinned() is pin
        trainer._batches = None  # the run starts from the first batch again
        assert trainer.fit() == "completed"
        runs[pin] = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
    assert_same_weights(runs[True], runs[False])
