from __future__ import annotations

import collections
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from noether_core.errors import CheckpointLoadError, CheckpointWriteError, NoetherError
from noether_core.io.checkpoints import (
    WRITEBACK_BYTES,
    CheckpointWriter,
    atomic_torch_save,
    check_weights_only_safe,
    load_checkpoint,
)
from noether_core.io.paths import RunPaths
from noether_core.run.counter import Counter, RunEnd, seek

POSITION = {"epoch": 1, "update": 10, "sample": 320}


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


@pytest.fixture
def paths(tmp_path: Path) -> RunPaths:
    return RunPaths.create(tmp_path, "run")


@pytest.fixture
def writer(paths: RunPaths) -> CheckpointWriter:
    return CheckpointWriter(paths, "run")


class NotAllowed:
    """A custom class: torch.save pickles it, weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.value = 3


class Point(NamedTuple):
    x: int


class InterruptOnPickle:
    def __reduce__(self) -> Any:
        raise KeyboardInterrupt


# --- atomic_torch_save -------------------------------------------------------------------------------


def test_atomic_save_round_trip_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    atomic_torch_save({"a": torch.arange(3), "n": 1}, target)
    atomic_torch_save({"a": torch.arange(5), "n": 2}, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["n"] == 2
    assert torch.equal(loaded["a"], torch.arange(5))
    assert _temp_files(tmp_path) == []


def test_atomic_save_respects_umask_not_private_mode(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    old = os.umask(0o022)
    try:
        atomic_torch_save({"a": 1}, target)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_writeback_hints_change_no_byte_of_a_large_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # past WRITEBACK_BYTES the writer asks the OS to start writing out what it wrote so far; the file
    # must be the very same as without the hints (macOS, Windows) and when the file system refuses them
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise here: the writer gives no hints")
    torch.manual_seed(0)
    payload = {"state_dict": {f"w{i}": torch.randn(256, 300) for i in range(12)}, "v": 1}  # ~3.7 MB
    hints: list[tuple[int, int, int]] = []
    real_fadvise = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        hints.append((offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    atomic_torch_save(payload, tmp_path / "hinted.th")
    monkeypatch.undo()
    # one hint per MiB or so written, each starting where the previous one ended
    assert len(hints) >= 3
    assert {advice for _, _, advice in hints} == {os.POSIX_FADV_DONTNEED}
    assert [offset for offset, _, _ in hints] == [0] + [o + n for o, n, _ in hints[:-1]]
    assert all(length >= WRITEBACK_BYTES for _, length, _ in hints)
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    atomic_torch_save(payload, tmp_path / "plain.th")
    monkeypatch.undo()

    def refused(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "posix_fadvise", refused, raising=False)
    atomic_torch_save(payload, tmp_path / "refused.th")
    monkeypatch.undo()

    hinted = (tmp_path / "hinted.th").read_bytes()
    assert len(hinted) > 3 * WRITEBACK_BYTES
    assert hinted == (tmp_path / "plain.th").read_bytes() == (tmp_path / "refused.th").read_bytes()
    loaded = load_checkpoint(tmp_path / "hinted.th")
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in payload["state_dict"].items())


def test_disk_full_on_fsync_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model_cp=latest_model.th"
    atomic_torch_save({"state_dict": {"w": torch.ones(4)}, "v": 1}, target)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        atomic_torch_save({"state_dict": {"w": torch.zeros(4)}, "v": 2}, target)
    monkeypatch.undo()

    message = str(info.value)
    assert str(target) in message
    assert os.strerror(errno.ENOSPC) in message
    assert isinstance(info.value, NoetherError)
    assert _temp_files(tmp_path) == []
    old = load_checkpoint(target)
    assert old["v"] == 1
    assert torch.equal(old["state_dict"]["w"], torch.ones(4))


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_write_failing_mid_file_keeps_old_file(tmp_path: Path) -> None:
    # A real failed write(2) half-way through the data: the file size limit makes the kernel refuse the
    # write with EFBIG, as a full disk refuses it with ENOSPC.
    target = tmp_path / "big.th"
    atomic_torch_save({"w": torch.full((16,), 7.0)}, target)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(CheckpointWriteError, match=r"big\.th"):
            atomic_torch_save({"w": torch.zeros(1 << 20)}, target)  # 4 MiB > 1 MiB limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert _temp_files(tmp_path) == []
    assert torch.equal(load_checkpoint(target)["w"], torch.full((16,), 7.0))


def test_pickling_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises(CheckpointWriteError, match=r"x\.th"):
        atomic_torch_save({"v": 2, "f": lambda: None}, target)
    assert _temp_files(tmp_path) == []
    assert load_checkpoint(target) == {"v": 1}


def test_interrupt_during_save_cleans_up_and_propagates(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"v": 2, "x": InterruptOnPickle()}, target)
    assert _temp_files(tmp_path) == []
    assert load_checkpoint(target) == {"v": 1}


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from noether_core.io.checkpoints import atomic_torch_save
    path, numel, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    big = torch.empty(numel)
    print("ready", flush=True)
    version = 1
    while True:
        big.fill_(float(version))
        payload = {"version": version, "state_dict": {"w": big}}
        if mode == "atomic":
            atomic_torch_save(payload, path)
        else:
            torch.save(payload, path)
        version += 1
    """
)
_NUMEL = 8 << 20  # 32 MiB per save: long enough to be caught mid-write


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed onto the target between listing and stat
        return 0


def _kill_mid_write(target: Path, mode: str) -> bool:
    """Run a process that saves to ``target`` in a loop and SIGKILL it while a write is under way.

    Returns whether the kill landed mid-write, judged from the files (a temp file for "atomic", a
    short target for "plain").
    """
    full_size = target.stat().st_size
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(target), str(_NUMEL), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if mode == "atomic":
                busy = any(_size(p) > 0 for p in _temp_files(target.parent))
            else:
                busy = target.stat().st_size < full_size
            if busy:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    if mode == "atomic":
        return bool(_temp_files(target.parent))
    return target.stat().st_size < full_size


def test_sigkill_during_atomic_save_leaves_previous_file_loadable(paths: RunPaths) -> None:
    target = paths.checkpoint_file("model", "latest", "model")
    atomic_torch_save({"version": 0, "state_dict": {"w": torch.zeros(_NUMEL)}}, target)
    landed_mid_write = False
    for _attempt in range(3):
        landed_mid_write = _kill_mid_write(target, "atomic")
        # Whatever the moment of the kill, the target is one complete version.
        loaded = torch.load(target, weights_only=True, map_location="cpu")
        weights = loaded["state_dict"]["w"]
        assert weights.numel() == _NUMEL
        assert bool((weights == float(loaded["version"])).all())
        assert load_checkpoint(target)["version"] == loaded["version"]
        if landed_mid_write:
            break
    assert landed_mid_write, "the kill never landed during a write; the test proved nothing"
    # The killed writer's partial temp file is recognised and removed when the next run starts.
    partial = _temp_files(paths.checkpoints)
    assert sorted(CheckpointWriter(paths).discard_partial_writes()) == sorted(partial)
    assert _temp_files(paths.checkpoints) == []
    assert CheckpointWriter(paths).tags("model") == ["latest"]


def test_sigkill_during_plain_torch_save_corrupts_the_file(tmp_path: Path) -> None:
    # The control for the test above: the same kill against a non-atomic save (the reference's D8)
    # leaves a file that does not load, and load_checkpoint says so instead of raising torch's error.
    target = tmp_path / "x.th"
    atomic_torch_save({"version": 0, "state_dict": {"w": torch.zeros(_NUMEL)}}, target)
    for _attempt in range(3):
        if _kill_mid_write(target, "plain"):
            break
    else:
        pytest.fail("the kill never landed during a write")
    with pytest.raises(CheckpointLoadError, match="truncated or corrupt"):
        load_checkpoint(target)


# --- load_checkpoint ---------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError, match=r"nope\.th.*does not exist"):
        load_checkpoint(tmp_path / "nope.th")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError, match="not a regular file"):
        load_checkpoint(tmp_path)


def test_load_truncated_file(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    atomic_torch_save({"w": torch.randn(1000)}, target)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match=r"x\.th.*truncated or corrupt") as info:
        load_checkpoint(target)
    assert "\n" not in str(info.value)


def test_load_garbage_and_empty_files(tmp_path: Path) -> None:
    for name, content in (("garbage.th", b"this is not a checkpoint" * 10), ("empty.th", b"")):
        target = tmp_path / name
        target.write_bytes(content)
        with pytest.raises(CheckpointLoadError, match=name.replace(".", r"\.")):
            load_checkpoint(target)


def test_load_refuses_custom_classes(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    torch.save({"obj": NotAllowed()}, target)
    with pytest.raises(CheckpointLoadError, match="weights_only"):
        load_checkpoint(target)


def test_load_requires_a_dict(tmp_path: Path) -> None:
    target = tmp_path / "x.th"
    torch.save(torch.ones(2), target)
    with pytest.raises(CheckpointLoadError, match="expected a dict, found Tensor"):
        load_checkpoint(target)


# --- weights_only safety -----------------------------------------------------------------------------


def test_check_weights_only_safe_accepts_what_loads(tmp_path: Path) -> None:
    payload = {
        "t": torch.randn(2, 3, dtype=torch.bfloat16),
        "p": nn.Parameter(torch.ones(2)),
        "od": collections.OrderedDict(a=torch.zeros(1)),
        "nested": [1, 2.5, True, None, "s", (1, 2), {"k": [torch.ones(1)]}],
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        3: "int key",
    }
    check_weights_only_safe(payload)
    target = tmp_path / "x.th"
    atomic_torch_save(payload, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["size"] == torch.Size([2, 3])
    assert loaded[3] == "int key"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (np.float64(1.0), "a.b: numpy.float64"),
        (NotAllowed(), "a.b: "),
        ({1, 2}, "a.b: builtins.set"),
        (Point(1), "a.b: "),
    ],
)
def test_check_weights_only_safe_names_offending_value(value: object, where: str) -> None:
    with pytest.raises(CheckpointWriteError, match="only tensors") as info:
        check_weights_only_safe({"a": {"b": value}, "ok": torch.ones(1)}, "file.th")
    assert where in str(info.value)


# --- CheckpointWriter --------------------------------------------------------------------------------


def test_save_model_payload_and_round_trip(writer: CheckpointWriter, paths: RunPaths) -> None:
    model = _model()
    model.train()
    model(torch.randn(5, 4))  # BatchNorm running stats and num_batches_tracked become non-trivial
    path = writer.save_model("model", "E1_U10_S320", model.state_dict(), position=POSITION)
    assert path == paths.root / "checkpoints" / "model_cp=E1_U10_S320_model.th"
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "checkpoint_tag", "training_iteration", "run_id"}
    assert raw["checkpoint_tag"] == "E1_U10_S320"
    assert raw["training_iteration"] == POSITION
    assert raw["run_id"] == "run"
    fresh = _model()
    fresh.load_state_dict(load_checkpoint(path)["state_dict"])
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_save_model_ema_and_extra(writer: CheckpointWriter) -> None:
    model = _model()
    path = writer.save_model(
        "model", "last", model.state_dict(), position=POSITION, ema=0.999, extra={"note": "x", "n": 3}
    )
    assert path.name == "model_ema=0.999_cp=last_model.th"
    loaded = load_checkpoint(path)
    assert loaded["ema"] == 0.999
    assert loaded["note"] == "x"
    assert loaded["n"] == 3
    with pytest.raises(ValueError, match="state_dict"):
        writer.save_model("model", "last", {}, position=POSITION, extra={"state_dict": {}})


def test_save_accepts_counter_as_position(writer: CheckpointWriter) -> None:
    counter = Counter(end=RunEnd("epoch", 4), updates_per_epoch=10, effective_batch_size=32)
    seek(counter, 25)
    path = writer.save_model("model", counter.tag, {"w": torch.ones(1)}, position=counter)
    assert load_checkpoint(path)["training_iteration"] == {"epoch": 2, "update": 25, "sample": 800}
    with pytest.raises(ValueError, match="missing sample"):
        writer.save_model("model", "x", {}, position={"epoch": 1, "update": 1})
    with pytest.raises(ValueError, match="update must be an int"):
        writer.save_model("model", "x", {}, position={"epoch": 1, "update": 1.5, "sample": 2})  # type: ignore[dict-item]


def test_run_id_defaults_to_paths(paths: RunPaths) -> None:
    path = CheckpointWriter(paths).save_model("m", "last", {}, position=POSITION)
    assert load_checkpoint(path)["run_id"] == paths.run_id
    other = CheckpointWriter(paths, "resumed-from-x").save_model("m", "last", {}, position=POSITION)
    assert load_checkpoint(other)["run_id"] == "resumed-from-x"


def test_save_optim_round_trip(writer: CheckpointWriter) -> None:
    model = _model()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    model(torch.randn(5, 4)).sum().backward()
    optim.step()
    path = writer.save_optim("model", "latest", optim.state_dict(), position=POSITION)
    assert path.name == "model_cp=latest_optim.th"
    loaded = load_checkpoint(path)
    assert loaded["training_iteration"] == POSITION
    fresh = torch.optim.AdamW(_model().parameters(), lr=1.0)
    fresh.load_state_dict(loaded["state_dict"])
    assert fresh.param_groups[0]["lr"] == 1e-2
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9)
    for index, state in optim.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][index]["exp_avg"], state["exp_avg"])


def test_save_trainer(writer: CheckpointWriter) -> None:
    state = {
        "callback_state_dicts": {"BestMetric": {"best": 0.5, "history": [torch.tensor(1.0)]}},
        "grad_scaler": {},
        "training_iteration": dict(POSITION),
    }
    path = writer.save_trainer("model", "latest", state, position=POSITION)
    assert path.name == "model_cp=latest_trainer.th"
    loaded = load_checkpoint(path)
    assert loaded["callback_state_dicts"]["BestMetric"]["best"] == 0.5
    assert loaded["grad_scaler"] == {}
    assert loaded["checkpoint_tag"] == "latest"
    assert loaded["training_iteration"] == POSITION
    with pytest.raises(ValueError, match="training_iteration"):
        writer.save_trainer(
            "model",
            "latest",
            {"training_iteration": {"epoch": 0, "update": 0, "sample": 0}},
            position=POSITION,
        )


def test_unsafe_plugin_state_is_refused_at_save(writer: CheckpointWriter) -> None:
    good = writer.save_trainer("model", "latest", {"callback_state_dicts": {}}, position=POSITION)
    bad_state = {"callback_state_dicts": {"BestMetric": {"best": np.float32(0.5)}}}
    with pytest.raises(CheckpointWriteError, match=r"callback_state_dicts\.BestMetric\.best: numpy\.float32"):
        writer.save_trainer("model", "latest", bad_state, position=POSITION)
    assert load_checkpoint(good)["callback_state_dicts"] == {}
    assert _temp_files(good.parent) == []


def _save_all(writer: CheckpointWriter, tag: str, position: dict[str, int]) -> None:
    writer.save_model("model", tag, {"w": torch.ones(1)}, position=position)
    writer.save_optim("model", tag, {"state": {}, "param_groups": []}, position=position)
    writer.save_trainer("model", tag, {"callback_state_dicts": {}}, position=position)
    writer.save_model("model", tag, {"w": torch.ones(1)}, position=position, ema=0.99)


def test_tags_and_prune(writer: CheckpointWriter, paths: RunPaths) -> None:
    updates = [10, 20, 90, 100, 110]
    for update in updates:
        position = {"epoch": update // 10, "update": update, "sample": update * 32}
        _save_all(writer, f"E{update // 10}_U{update}_S{update * 32}", position)
    for tag in ("latest", "last", "best_model.loss.val"):
        _save_all(writer, tag, POSITION)
    writer.save_model("other", "E1_U10_S320", {}, position=POSITION)

    assert writer.tags("model") == [
        "E1_U10_S320",
        "E2_U20_S640",
        "E9_U90_S2880",
        "E10_U100_S3200",
        "E11_U110_S3520",
        "best_model.loss.val",
        "last",
        "latest",
    ]
    deleted = writer.prune("model", keep_last_n=2)
    assert len(deleted) == 3 * 4  # three tags, each with model, optim, trainer and EMA weights
    assert writer.tags("model") == [
        "E10_U100_S3200",
        "E11_U110_S3520",
        "best_model.loss.val",
        "last",
        "latest",
    ]
    checkpoints = paths.checkpoints
    assert not (checkpoints / "model_ema=0.99_cp=E9_U90_S2880_model.th").exists()
    assert (checkpoints / "model_ema=0.99_cp=E10_U100_S3200_model.th").exists()
    assert (checkpoints / "model_ema=0.99_cp=latest_model.th").exists()
    assert writer.tags("other") == ["E1_U10_S320"]  # another model's files are not touched

    assert writer.prune("model", keep_last_n=2) == []
    writer.prune("model", keep_last_n=0)
    assert writer.tags("model") == ["best_model.loss.val", "last", "latest"]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="keep_last_n"):
            writer.prune("model", bad)  # type: ignore[arg-type]


def test_every_file_loads_weights_only(writer: CheckpointWriter, paths: RunPaths) -> None:
    _save_all(writer, "latest", POSITION)
    files = sorted(paths.checkpoints.iterdir())
    assert len(files) == 4
    for file in files:
        assert isinstance(torch.load(file, weights_only=True), dict)
