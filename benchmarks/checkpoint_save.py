"""What an atomic checkpoint costs, next to writing the same bytes without any safety.

For models of about 1M, 4M and 16M float32 parameters (weights files of 4, 16 and 64 MB) it times two
kinds of save:

**One file**, the weights as ``latest`` (``CheckpointWriter.save_model``):

* ``atomic``: the weights-only check, ``torch.save`` into a temporary file beside the target (asking
  the kernel to start writing each MiB out as it comes), one ``fsync`` of its data, the rename onto
  the target, one ``fsync`` of the directory (a set of one file needs no commit journal: its rename
  is the commit point);
* ``torch.save``: ``torch.save`` of the same payload straight onto the target, then ``fsync`` (a plain save
  plus a flush to disk; not safe against a kill). It computes the CRC-32 of every zip record, torch's
  default; the writer skips it (``torch.load`` never checks it);
* ``raw``: the payload's bytes, serialized once beforehand, written onto the target with one ``write``
  and one ``fsync``: the floor for putting those bytes on disk;
* ``serialize``: ``torch.save`` of the payload into memory, without the CRC-32s as the writer does, and
  nothing written: what the serializer alone costs (``atomic`` pays it, ``raw`` does not).

**A set**, what CheckpointCallback and EmaCallback write at one update: the weights, EMA weights, the
optimizer state (AdamW: two tensors per parameter) and a small trainer state, as one
``checkpoint_set("latest")``:

* ``atomic``: the four parts each written to a temporary file and synced (each part's sync in a
  background thread while the next part is serialized), then one commit: the journal (written and
  synced), its rename, a directory sync, the four renames, a directory sync, the journal's
  removal (see ``noether_core/io/checkpoint_journal.py``);
* ``raw``: the same four payloads' bytes, serialized beforehand, each written onto its file with one
  ``write`` and one ``fsync``.

Each save overwrites the previous files, as ``latest`` does. Rounds alternate the order; each number is
the median over rounds, with the range over rounds of the ratio to ``raw``. The clock is wall time (the
work is I/O). Target: ``atomic`` within 1.3x of ``raw`` at every size, for one file and for the set.

    python benchmarks/checkpoint_save.py                  # the table, in a temporary directory
    python benchmarks/checkpoint_save.py --dir /scratch   # on another filesystem
    python benchmarks/checkpoint_save.py --check          # exit 1 when the target is missed
    python benchmarks/checkpoint_save.py --breakdown      # the 4 MB save taken apart
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ema_update import blocks
from noether_core.io.checkpoints import CheckpointWriter
from noether_core.io.checkpoints import _without_crc32 as without_crc32
from noether_core.io.paths import RunPaths

POSITION = {"epoch": 1, "update": 100, "sample": 3200}
#: label -> (width, blocks) of ``ema_update.blocks``: weights files of about 4, 16 and 64 MB
SIZES = {"4 MB": (128, 8), "16 MB": (256, 8), "64 MB": (512, 8)}
TARGET = 1.3


def serialized(payload: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def raw_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def optimizer_state(model: nn.Module) -> dict[str, Any]:
    """AdamW's state after one step: ``exp_avg`` and ``exp_avg_sq`` for every parameter."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return optimizer.state_dict()


def candidates(directory: Path, model: nn.Module) -> dict[str, Callable[[], None]]:
    writer = CheckpointWriter(RunPaths.create(directory, "run"))
    weights = model.state_dict()
    ema = {k: v.clone() for k, v in weights.items()}
    optim = optimizer_state(model)
    trainer_state = {"callback_state_dicts": {"online_loss": {"sums": torch.zeros(4)}}, "grad_scaler": {}}
    target = writer.paths.checkpoint_file("model", "latest", "model")
    envelope = {"checkpoint_tag": "latest", "training_iteration": POSITION, "run_id": "run"}
    payload = {"state_dict": weights, **envelope}
    plain_target = directory / "plain.th"
    raw_target = directory / "raw.th"
    data = serialized(payload)
    set_data = [
        data,
        serialized({"state_dict": ema, "ema": 0.999, **envelope}),
        serialized({"state_dict": optim, **envelope}),
        serialized({**trainer_state, **envelope}),
    ]
    set_targets = [directory / f"raw_set_{i}.th" for i in range(len(set_data))]

    def atomic() -> None:
        assert writer.save_model("model", "latest", weights, position=POSITION) == target

    def plain() -> None:
        with open(plain_target, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())

    def raw() -> None:
        raw_write(raw_target, data)

    def serialize() -> None:
        with without_crc32():
            torch.save(payload, io.BytesIO())

    def atomic_set() -> None:
        with writer.checkpoint_set("latest") as parts:
            parts.save_model("model", weights, position=POSITION)
            parts.save_model("model", ema, position=POSITION, ema=0.999)
            parts.save_optim("model", optim, position=POSITION)
            parts.save_trainer("model", trainer_state, position=POSITION)

    def raw_set() -> None:
        for path, part in zip(set_targets, set_data, strict=True):
            raw_write(path, part)

    return {
        "atomic": atomic,
        "torch.save": plain,
        "raw": raw,
        "serialize": serialize,
        "atomic set": atomic_set,
        "raw set": raw_set,
    }


class _Discard:
    """A file object that drops what is written: ``torch.save``'s own work, no copy, no I/O."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def breakdown_candidates(
    directory: Path, model: nn.Module, pool: ThreadPoolExecutor
) -> dict[str, Callable[[], None]]:
    """The 4 MB save taken apart: the serializer over the model's tensors and over one tensor of the same
    bytes, the bytes dropped; the four parts of a set (serialized beforehand) written and synced one
    after another, and written and then synced all at once (threads: ``fsync`` releases the GIL)."""
    weights = model.state_dict()
    flat = {"w": torch.cat([t.flatten() for t in weights.values()])}
    data = serialized({"state_dict": weights})
    parts = [data, data, serialized(optimizer_state(model)), serialized({"step": 1})]

    def save(obj: Any) -> Callable[[], None]:
        def run() -> None:
            with without_crc32():
                torch.save(obj, _Discard())

        return run

    def written(tag: str) -> list[int]:
        fds = []
        for i, part in enumerate(parts):
            fd = os.open(directory / f"{tag}{i}.th", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            os.write(fd, part)
            fds.append(fd)
        return fds

    def synced(at_once: bool) -> Callable[[], None]:
        def run() -> None:
            fds = written("at_once" if at_once else "in_turn")
            try:
                if at_once:
                    list(pool.map(os.fsync, fds))
                else:
                    for fd in fds:
                        os.fsync(fd)
            finally:
                for fd in fds:
                    os.close(fd)

        return run

    return {
        f"torch.save, {len(weights)} tensors, bytes dropped": save({"state_dict": weights}),
        "torch.save, 1 tensor of the same bytes, dropped": save(flat),
        "a set's 4 parts written, synced in turn": synced(False),
        "a set's 4 parts written, synced at once": synced(True),
    }


def breakdown(directory: Path, rounds: int) -> None:
    width, depth = SIZES["4 MB"]
    with ThreadPoolExecutor(4) as pool:
        samples = measure(breakdown_candidates(directory, blocks(width, depth), pool), rounds)
    print("4 MB, median per call:")
    for name, values in samples.items():
        print(f"  {name:<50} {statistics.median(values) * 1e3:>7.2f} ms")


def measure(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every candidate, one sample per round, the order rotating between rounds."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def filesystem(path: Path) -> str:
    best = ("", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, kind)
    except OSError:
        pass
    return best[1]


def ratio_range(samples: dict[str, list[float]], name: str, floor: str) -> tuple[float, float, float]:
    """Median and range over rounds of ``name``'s time over ``floor``'s in the same round."""
    ratios = [a / b for a, b in zip(samples[name], samples[floor], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temporary directory)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument(
        "--breakdown", action="store_true", help="only the 4 MB save taken apart (see the docs)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    ok = True
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(
            f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"writing to {directory} ({filesystem(directory)}), wall time, {args.rounds} rounds, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        print()
        if args.breakdown:
            breakdown(directory, args.rounds)
            return 0
        header = (
            f"{'size':>6} {'what':>8} {'bytes':>9}  {'atomic':>9} {'torch.save':>11} {'raw':>9}  "
            f"{'atomic/raw (range)':>20} {'torch.save/raw':>14} {'serialize/raw':>13}"
        )
        print(header)
        print("-" * len(header))
        for label, (width, depth) in SIZES.items():
            samples = measure(candidates(directory, blocks(width, depth)), args.rounds)
            med = {name: statistics.median(values) for name, values in samples.items()}
            size = (directory / "raw.th").stat().st_size
            set_size = sum(path.stat().st_size for path in directory.glob("raw_set_*.th"))
            one = ratio_range(samples, "atomic", "raw")
            many = ratio_range(samples, "atomic set", "raw set")
            plain = ratio_range(samples, "torch.save", "raw")
            serializer = ratio_range(samples, "serialize", "raw")
            ok &= one[0] <= TARGET and many[0] <= TARGET
            print(
                f"{label:>6} {'one file':>8} {size / 1e6:>6.1f} MB {med['atomic'] * 1e3:>6.1f} ms "
                f"{med['torch.save'] * 1e3:>8.1f} ms {med['raw'] * 1e3:>6.1f} ms  "
                f"{one[0]:>5.2f}x ({one[1]:.2f}-{one[2]:.2f}) {plain[0]:>13.2f}x {serializer[0]:>12.2f}x"
            )
            print(
                f"{'':>6} {'set of 4':>8} {set_size / 1e6:>6.1f} MB {med['atomic set'] * 1e3:>6.1f} ms "
                f"{'':>11} {med['raw set'] * 1e3:>6.1f} ms  {many[0]:>5.2f}x ({many[1]:.2f}-{many[2]:.2f})"
            )
    print()
    print(
        f"target: atomic within {TARGET}x of raw (median of the per-round ratios), one file and a set: "
        + ("met" if ok else "NOT met")
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
