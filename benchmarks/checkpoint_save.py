"""What an atomic checkpoint save costs, next to writing the same bytes without any safety.

For models of about 1M, 10M and 50M float32 parameters it times, per save of the weights file:

* ``atomic``: ``CheckpointWriter.save_model`` as CheckpointCallback uses it: the weights-only check,
  ``torch.save`` into a temporary file beside the target, ``fsync``, rename onto the target, ``fsync`` of
  the directory;
* ``torch.save``: ``torch.save`` of the same payload straight onto the target, then ``fsync`` (what a
  plain save plus a flush to disk costs; not safe against a kill). It computes the CRC-32 of every zip
  record, torch's default; the writer skips it (``torch.load`` never checks it), which is most of the
  difference between the two for large files;
* ``raw``: the payload's bytes, serialized once beforehand, written onto the target with one ``write``
  and ``fsync``: the floor for putting those bytes on disk.

Each save overwrites the previous file, as ``latest`` does. Rounds alternate the order; each number is the
median over rounds. The clock is wall time (the work is I/O). Target: ``atomic`` within 1.3x of ``raw``
(checked against the default, CRC-on ``atomic``).

    python benchmarks/checkpoint_save.py                  # the table, in a temporary directory
    python benchmarks/checkpoint_save.py --dir /scratch   # on another filesystem
    python benchmarks/checkpoint_save.py --check          # exit 1 when the target is missed
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ema_update import SIZES, blocks
from noether_core.io.checkpoints import CheckpointWriter
from noether_core.io.paths import RunPaths

POSITION = {"epoch": 1, "update": 100, "sample": 3200}


def candidates(directory: Path, state_dict: dict[str, torch.Tensor]) -> dict[str, Callable[[], None]]:
    writer = CheckpointWriter(RunPaths.create(directory, "run"))
    atomic_target = writer.paths.checkpoint_file("model", "latest", "model")
    payload = {
        "state_dict": state_dict,
        "checkpoint_tag": "latest",
        "training_iteration": POSITION,
        "run_id": "run",
    }
    plain_target = directory / "plain.th"
    raw_target = directory / "raw.th"
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()

    def atomic() -> None:
        assert writer.save_model("model", "latest", state_dict, position=POSITION) == atomic_target

    def plain() -> None:
        with open(plain_target, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())

    def raw() -> None:
        with open(raw_target, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    return {"atomic": atomic, "torch.save": plain, "raw": raw}


def measure(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temporary directory)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ok = True
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"torch {torch.__version__}, writing to {directory} ({filesystem(directory)}), wall time")
        print()
        header = (
            f"{'size':>5} {'file':>9}  {'atomic':>9} {'torch.save':>11} {'raw':>9}  {'atomic/raw':>10} "
            f"{'torch.save/raw':>14}"
        )
        print(header)
        print("-" * len(header))
        for label, (width, depth) in SIZES.items():
            state_dict = blocks(width, depth).state_dict()
            result = measure(candidates(directory, state_dict), args.rounds)
            size = (directory / "raw.th").stat().st_size
            ratio = result["atomic"] / result["raw"]
            ok &= ratio <= 1.3
            times = "".join(
                f" {result[name] * 1e3:>{w}.1f} ms"
                for name, w in (("atomic", 6), ("torch.save", 8), ("raw", 6))
            )
            print(
                f"{label:>5} {size / 1e6:>6.1f} MB{times}  {ratio:>9.2f}x "
                f"{result['torch.save'] / result['raw']:>13.2f}x"
            )
    print()
    print("target: atomic within 1.3x of raw: " + ("met" if ok else "NOT met"))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
