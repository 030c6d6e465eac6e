"""The kill-and-resume harness: real ``noether train`` processes SIGKILLed at random moments and
resumed until their run is done, then compared with an uninterrupted run of the same config.

Run it as a script for the figures (``docs/reliability.md``)::

    python tests/kill_resume.py --kills 100 --seed 0

or import it (``tests/test_kill_resume.py``): :func:`run_harness` returns a :class:`Report`.

What it does:

1. Writes :data:`CONFIG` (an MLP on blobs, on CPU, seeded, one thread, no data workers) with
   ``CheckpointCallback`` (every position tag resumable, and ``latest``), ``EmaCallback`` (with an EMA
   evaluation child), ``BestCheckpointCallback`` (with a tolerance), ``OfflineLossCallback``, an
   ``OnlineLossCallback`` whose window straddles the checkpoints, the default plugins, and a
   ``MetricEarlyStopper`` that stops the run at update 160 of 200 (so both a long run and the stop path
   are covered).
2. Trains it once without interruption (the reference) and once more (the control: two uninterrupted
   runs must compare equal, or the comparison itself is wrong).
3. Runs trials: each starts ``noether train CONFIG`` and, after every kill, ``noether train --resume``,
   until a process ends by itself. A trial is given 1 to :data:`MAX_KILLS_PER_RUN` faults, dealt from
   a shuffled :data:`DECK` (seeded RNG), each striking at a random moment of its window. The windows
   are measured as the processes run (the median of the latest ones), since a loaded machine is
   slower:

   * ``startup``: while the process starts (imports, setup), before its first line of output;
   * ``training``: the training still to come (a resumed process has less), up to the process's end;
   * ``commit``: inside a checkpoint commit. ``checkpoints/`` is polled for a new hidden file or
     ``*.tmp`` (a partial write, a journal); the process is stopped (SIGSTOP), and killed if the file is
     still there, else let go to try the next commit;
   * ``resume``: only for ``--resume`` processes, a random moment within :data:`RESUME_WINDOW_S` after
     its first line of output (the checkpoint has just been loaded; the metrics are being cut back to
     it, the run's files rewritten and the trackers started).

   Every kill is a stop, a look at ``checkpoints/`` (a kill of any kind that finds a partial write
   there counts as inside a commit) and a SIGKILL. A run that has no checkpoint yet when it is killed is
   started afresh (its directory removed). A process killed after its run had ended (while it exits) is
   resumed like any other, as a job scheduler would: the resume has to leave the run as it was. A trial
   whose faults all came after its process had ended is one more uninterrupted run; the report counts
   it apart.
4. Compares each finished trial with the reference: every ``*.th`` file in ``checkpoints/`` (the same
   names; each pair loaded with ``torch.load(weights_only=True)`` and equal bit for bit, tensors,
   numbers and all: weights, EMA weights, optimizer state, trainer state with the counter, the random
   generators and every plugin's state), ``metrics.jsonl`` (each record exactly once, the values equal;
   :data:`VOLATILE_KEYS` such as ``train_time/*`` are left out), ``summary.yaml``'s status and
   ``config.yaml``. A trial that ends early (a resume refused, an exit status other than 0 or -9) is
   compared only on the position tags both runs have.

It relies only on the contracts of DESIGN.md: the CLI, the exit statuses, the file names in
``checkpoints/`` and ``metrics.jsonl``. Hidden files (names starting with ``.``) in ``checkpoints/`` are
never compared: that is where partial writes and journals live.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

#: The run every trial repeats: 200 updates of 16 samples (12.5 epochs of 256 blobs); a checkpoint
#: every 10 updates (every tag with optimizer state), the stopper ends it at update 160.
CONFIG: dict[str, Any] = {
    "trainer": {
        "max_updates": 200,
        "batch_size": 16,
        "seed": 0,
        "device": "cpu",
        "num_threads": 1,
        "deterministic": True,
        "log_every_n_updates": 20,
        "track_every_n_updates": 10,
    },
    "model": {"kind": "mlp", "kwargs": {"in_features": 2, "out_features": 4, "hidden": 256, "dropout": 0.1}},
    "optimizer": {"kind": "adamw", "lr": 0.01, "lr_schedule": {"kind": "cosine", "warmup_updates": 5}},
    "datasets": {
        "train": {"kind": "blobs", "kwargs": {"size": 256, "seed": 0}, "num_workers": 0},
        "val": {"kind": "blobs", "kwargs": {"size": 64, "seed": 1}, "num_workers": 0},
    },
    "callbacks": [
        # a window of 7 updates: most checkpoints fall inside one, so a resume must restore it
        {"kind": "OnlineLossCallback", "name": "online7", "every_n_updates": 7, "verbose": False},
        {"kind": "OfflineLossCallback", "every_n_updates": 10, "dataset_key": "val"},
        {
            "kind": "EmaCallback",
            "every_n_updates": 10,
            "target_factors": [0.9],
            "eval_callbacks": [{"kind": "OfflineLossCallback", "every_n_updates": 10, "dataset_key": "val"}],
        },
        {
            "kind": "BestCheckpointCallback",
            "every_n_updates": 10,
            "metric_key": "loss/val/total",
            "tolerances": [3],
        },
        {"kind": "MetricEarlyStopper", "every_n_updates": 10, "metric_key": "loss/val/total", "tolerance": 5},
        {"kind": "CheckpointCallback", "every_n_updates": 10, "save_optim": True},
    ],
}

#: Metric keys whose values depend on the clock or the process, not on the training: left out of the
#: comparison (``fnmatch`` patterns).
VOLATILE_KEYS = (
    "train_time/*",
    "*/train_time/*",
    "eta",
    "eta/*",
    "*/eta",
    "peak_memory/*",
    "*/peak_memory/*",
)
#: Plugin states in the trainer file that hold clock readings (the partial window of the train-time
#: sums): left out of the comparison like the volatile keys, by their path in the trainer state.
VOLATILE_STATES = ("plugins.TrainTimeCallback", "entry_state.TrainTimeCallback")
#: Seconds after a resuming process's first line of output within which a ``resume`` fault kills it.
RESUME_WINDOW_S = 0.15
#: The most faults one trial is given.
MAX_KILLS_PER_RUN = 4
#: A process running longer than this is killed and reported as hung.
PROCESS_TIMEOUT_S = 600.0
RUN_ID = "run"

Fault = Literal["startup", "training", "commit", "resume"]
FAULTS: tuple[Fault, ...] = ("startup", "training", "commit", "resume")
#: The faults are dealt from this deck, shuffled, and a new one once it is used up: any six faults in a
#: row hold every kind (a small run covers them all). A ``resume`` card waits for a resuming process.
DECK: tuple[Fault, ...] = ("startup", "training", "training", "commit", "commit", "resume")

#: The kinds of mismatch, in the order the report lists them.
MISMATCH_KINDS = (
    "resume refused",
    "exit status",
    "hung",
    "weights",
    "ema weights",
    "optimizer state",
    "trainer state",
    "checkpoint unloadable",
    "checkpoint missing",
    "checkpoint extra",
    "metric record missing",
    "metric record duplicated",
    "metric record extra",
    "metric value",
    "metrics unreadable",
    "summary status",
    "config.yaml",
)


# ------------------------------------------------------------------------------------------ records


@dataclass
class Timing:
    """How long the reference run took: to its first line of output, and from there to its end."""

    startup: float
    training: float


@dataclass
class ProcessRecord:
    """One ``noether train`` process of a trial and what happened to it."""

    trial: int
    index: int
    mode: Literal["train", "resume", "restart"]
    fault: Fault | None
    fraction: float
    returncode: int | None = None
    signalled: bool = False
    """The harness sent it SIGKILL."""
    killed: bool = False
    """... and it died of it (exit status -9)."""
    moment: Fault | None = None
    """Where the kill landed: ``startup`` if the process had printed nothing yet (whatever the fault
    aimed at), else the fault's own kind."""
    in_commit: bool = False
    hung: bool = False
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)

    @property
    def in_resume(self) -> bool:
        return self.killed and self.moment == "resume"


@dataclass(frozen=True)
class Mismatch:
    """One difference between a trial and the reference: its ``kind`` (one of :data:`MISMATCH_KINDS`),
    ``what`` differs (a file, a metric key, an update) and a ``detail`` for a person."""

    trial: int
    kind: str
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"trial {self.trial}: {self.kind}: {self.what}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Trial:
    index: int
    run_dir: Path
    faults: int
    processes: list[ProcessRecord] = field(default_factory=list)
    completed: bool = False
    mismatches: list[Mismatch] = field(default_factory=list)
    records_missing: int = 0
    records_duplicated: int = 0

    @property
    def kills(self) -> int:
        return sum(p.killed for p in self.processes)

    @property
    def identical(self) -> bool:
        return self.completed and not self.mismatches


@dataclass
class Report:
    """The figures of one harness run; :meth:`table` prints them."""

    seed: int
    kills_wanted: int
    reference: Path
    reference_status: str
    reference_updates: int
    control: list[Mismatch] | None
    trials: list[Trial]
    timing: Timing
    seconds: float = 0.0

    @property
    def processes(self) -> list[ProcessRecord]:
        return [p for t in self.trials for p in t.processes]

    @property
    def kills(self) -> int:
        return sum(p.killed for p in self.processes)

    def kills_by_moment(self) -> Counter[str]:
        return Counter(p.moment for p in self.processes if p.killed and p.moment is not None)

    @property
    def kills_in_commit(self) -> int:
        return sum(p.killed and p.in_commit for p in self.processes)

    @property
    def kills_in_resume(self) -> int:
        return sum(p.in_resume for p in self.processes)

    @property
    def resumes(self) -> int:
        return sum(p.mode == "resume" for p in self.processes)

    @property
    def restarts(self) -> int:
        return sum(p.mode == "restart" for p in self.processes)

    @property
    def runs(self) -> list[Trial]:
        """The trials in which at least one kill landed (in the others every fault came after the
        process had ended: each is one more uninterrupted run)."""
        return [t for t in self.trials if t.kills]

    @property
    def completed(self) -> int:
        return sum(t.completed for t in self.runs)

    @property
    def identical(self) -> int:
        return sum(t.identical for t in self.runs)

    @property
    def all_identical(self) -> bool:
        """Every trial, killed or not, ended identical to the reference (and the control too)."""
        return all(t.identical for t in self.trials) and not self.control

    @property
    def records_missing(self) -> int:
        return sum(t.records_missing for t in self.trials)

    @property
    def records_duplicated(self) -> int:
        return sum(t.records_duplicated for t in self.trials)

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for t in self.trials for m in t.mismatches]

    def mismatches_by_kind(self) -> dict[str, tuple[int, int]]:
        """``{kind: (trials affected, occurrences)}`` for every kind that occurred."""
        out: dict[str, tuple[int, int]] = {}
        for kind in MISMATCH_KINDS:
            found = [m for m in self.mismatches if m.kind == kind]
            if found:
                out[kind] = (len({m.trial for m in found}), len(found))
        return out

    def unexpected_exits(self) -> list[ProcessRecord]:
        """Processes that ended neither killed (-9) nor completed (0)."""
        return [p for p in self.processes if not p.killed and p.returncode != 0]

    def table(self, *, per_trial: bool = True) -> str:
        runs = len(self.runs)
        by_moment = self.kills_by_moment()
        rows: list[tuple[str, str]] = [
            ("kills (SIGKILL, exit status -9)", str(self.kills)),
            ("  while the process started (no output yet)", str(by_moment["startup"])),
            ("  at a random moment of training (or exit)", str(by_moment["training"])),
            ("  aimed at a checkpoint commit", str(by_moment["commit"])),
            ("  inside a resume", str(self.kills_in_resume)),
            ("  of all these, inside a checkpoint commit", str(self.kills_in_commit)),
            ("resumes (noether train --resume)", str(self.resumes)),
            ("fresh starts of a run killed before its first checkpoint", str(self.restarts)),
            ("runs killed at least once", str(runs)),
            ("runs completed (last process exit 0)", f"{self.completed}/{runs}"),
            ("runs that ended identical to the uninterrupted run", f"{self.identical}/{runs}"),
            (
                "metric records missing",
                f"{self.records_missing} (in {sum(t.records_missing > 0 for t in self.runs)} runs)",
            ),
            (
                "metric records duplicated",
                f"{self.records_duplicated} (in {sum(t.records_duplicated > 0 for t in self.runs)} runs)",
            ),
            (
                "runs whose faults all came too late (uninterrupted), identical",
                f"{sum(t.identical for t in self.trials if not t.kills)}/{len(self.trials) - runs}",
            ),
            (
                "control run (uninterrupted) identical",
                "not run" if self.control is None else "NO" if self.control else "yes",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [
            f"kill-and-resume harness: seed {self.seed}, {self.kills_wanted} kills wanted, "
            f"{self.seconds:.0f} s; the uninterrupted run {self.reference_status} at update "
            f"{self.reference_updates}, its first output after {self.timing.startup:.1f} s, "
            f"then {self.timing.training:.1f} s to its end",
            "",
            *(f"{k:<{width}}  {v}" for k, v in rows),
            "",
            "mismatches by kind (runs affected, occurrences):",
        ]
        kinds = self.mismatches_by_kind()
        if not kinds:
            lines.append("  none")
        for kind, (trials, count) in kinds.items():
            lines.append(f"  {kind:<26} {trials:>4} runs {count:>6}")
            if kind == "metric value":
                keys = Counter(m.what.split(" @ ")[0] for m in self.mismatches if m.kind == kind)
                for key, n in keys.most_common():
                    lines.append(f"      {key}: {n}")
        for m in self.control or []:
            lines.append(f"  control: {m.kind}: {m.what} {m.detail}")
        if per_trial:
            lines += ["", "runs:"]
            for t in self.trials:
                kills = ", ".join(
                    f"{p.moment}{'+commit' if p.in_commit and p.moment != 'commit' else ''}"
                    for p in t.processes
                    if p.killed
                )
                missed = ", ".join(str(p.fault) for p in t.processes if p.fault and not p.killed)
                kinds_here = sorted({m.kind for m in t.mismatches})
                result = "identical" if t.identical else ("; ".join(kinds_here) or "incomplete")
                lines.append(
                    f"  {t.index:>3}: {len(t.processes)} processes, {t.kills} kills"
                    f"{' (' + kills + ')' if kills else ''}"
                    f"{'; ended before the fault: ' + missed if missed else ''}: {result}"
                )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ processes


def noether_command() -> list[str]:
    """The ``noether`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / ("noether.exe" if os.name == "nt" else "noether")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "noether_core"]


def _temp_names(checkpoints: Path) -> set[str]:
    """Hidden files and ``*.tmp`` in ``checkpoints/``: partial writes and commit journals."""
    try:
        names = os.listdir(checkpoints)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(".") or n.endswith(".tmp")}


class Watched:
    """A ``noether train`` process whose output is read (and timed) on a thread, and which can be
    frozen, looked at and killed."""

    def __init__(self, args: Sequence[str], log: Path, checkpoints: Path, ignore: set[str]) -> None:
        self.checkpoints = checkpoints
        self.ignore = ignore
        # partial writes left by an earlier kill: not this process's (it sweeps them at start)
        self._stale = _temp_names(checkpoints)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
        self.started = time.monotonic()
        self._log = log.open("a", encoding="utf-8")
        self._log.write(f"$ {' '.join(args)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.first_line = threading.Event()
        self.first_line_at: float | None = None
        self._log_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.first_line_at is None:
                self.first_line_at = time.monotonic()
            self.lines.append(line.rstrip("\n"))
            with self._log_lock:
                self._log.write(line)
            self.first_line.set()
        self.first_line.set()

    def note(self, text: str) -> None:
        """A line of the harness's own in the process log, between brackets."""
        with self._log_lock:
            self._log.write(f"[{text}, {time.monotonic() - self.started:.3f} s after the start]\n")

    def running(self) -> bool:
        return self.proc.poll() is None

    def partial_writes(self) -> set[str]:
        """Partial writes of this process in ``checkpoints/`` now."""
        now = _temp_names(self.checkpoints)
        self._stale &= now  # a stale name swept and written again is this process's
        return now - self._stale - self.ignore

    def sleep(self, seconds: float) -> bool:
        """Sleep while the process runs; whether it still runs afterwards."""
        try:
            self.proc.wait(timeout=max(seconds, 0.0))
        except subprocess.TimeoutExpired:
            return True
        return False

    def wait_first_line(self, deadline: float) -> bool:
        while not self.first_line.wait(timeout=0.05):
            if time.monotonic() > deadline:
                return False
        return self.running()

    def _stop(self) -> bool:
        """SIGSTOP and wait until it is stopped; False if it ended first (it is not reaped here)."""
        try:
            os.kill(self.proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        info = os.waitid(os.P_PID, self.proc.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
        return info is not None and info.si_code == os.CLD_STOPPED

    def kill(self) -> tuple[bool, bool]:
        """Freeze it, look for its partial writes, SIGKILL it: ``(killed, inside a commit)``."""
        if not self._stop():
            return False, False
        partial = self.partial_writes()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.note(f"SIGKILL; partial writes: {', '.join(sorted(partial)) or 'none'}")
        return True, bool(partial)

    def kill_in_commit(self, deadline: float) -> tuple[bool, bool]:
        """Poll for a partial write and kill the process while it is there: ``(killed, inside a commit)``;
        ``(False, False)`` when the process ended first."""
        while self.running() and time.monotonic() < deadline:
            if not self.partial_writes():
                continue
            if not self._stop():
                break
            partial = self.partial_writes()
            if partial:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.note(f"SIGKILL inside a commit; partial writes: {', '.join(sorted(partial))}")
                return True, True
            os.kill(self.proc.pid, signal.SIGCONT)  # that write was done: wait for the next one
        return False, False

    def finish(self, timeout: float) -> tuple[int, bool]:
        """Wait for the end: ``(exit status, hung)``; a process past ``timeout`` is killed."""
        hung = False
        try:
            self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            hung = True
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        self._log.write(f"[exit status {self.proc.returncode}]\n")
        self._log.close()
        return self.proc.returncode, hung


# ------------------------------------------------------------------------------------------ comparison


def _volatile(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in VOLATILE_KEYS)


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Where ``a`` and ``b`` differ (paths into nested dicts and lists); tensors and floats exactly, NaN
    equal to NaN."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            yield f"{path}: a tensor and a {type(b if isinstance(a, torch.Tensor) else a).__name__}"
        elif a.dtype != b.dtype or a.shape != b.shape:
            yield f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        elif not torch.equal(a, b):
            if a.is_floating_point() and torch.equal(a.isnan(), b.isnan()):
                same = (a == b) | a.isnan()
                if bool(same.all()):
                    return
                worst = (a - b).abs().nan_to_num(0).max().item()
                yield f"{path}: {int((~same).sum())} of {a.numel()} values differ, by up to {worst:.3g}"
            else:
                yield f"{path}: tensors differ"
    elif isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if path else str(key)
            if where in VOLATILE_STATES:
                continue
            if key not in b:
                yield f"{where}: only in the reference"
            elif key not in a:
                yield f"{where}: only in the trial"
            else:
                yield from differences(a[key], b[key], where)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            yield f"{path}: {len(a)} items vs {len(b)}"
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                yield from differences(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif type(a) is not type(b) or a != b:
        yield f"{path}: {a!r} vs {b!r}"


def _file_kind(name: str) -> str:
    if "_ema=" in name:
        return "ema weights"
    if name.endswith("_optim.th"):
        return "optimizer state"
    if name.endswith("_trainer.th"):
        return "trainer state"
    return "weights"


def _tag(name: str) -> str:
    return name.split("_cp=", 1)[1].rsplit("_", 1)[0] if "_cp=" in name else name


def _is_position_tag(tag: str) -> bool:
    return tag.startswith("E") and "_U" in tag and "_S" in tag


def checkpoint_files(run: Path) -> set[str]:
    """The checkpoint files of ``run`` (hidden partial writes and journals left out)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return set()
    return {n for n in os.listdir(folder) if n.endswith(".th") and not n.startswith(".")}


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def compare_checkpoints(reference: Path, trial: Path, *, complete: bool) -> list[tuple[str, str, str]]:
    """``(kind, what, detail)`` for every checkpoint difference; for a run that did not complete, only
    the position tags both runs have are compared."""
    out: list[tuple[str, str, str]] = []
    ref_names, trial_names = checkpoint_files(reference), checkpoint_files(trial)
    if complete:
        out += [("checkpoint missing", n, "") for n in sorted(ref_names - trial_names)]
        out += [("checkpoint extra", n, "") for n in sorted(trial_names - ref_names)]
    for name in sorted(ref_names & trial_names):
        if not complete and not _is_position_tag(_tag(name)):
            continue
        try:
            ref = _load(reference / "checkpoints" / name)
        except Exception as exc:
            raise RuntimeError(f"the reference's {name} does not load: {exc}") from exc
        try:
            got = _load(trial / "checkpoints" / name)
        except Exception as exc:
            out.append(("checkpoint unloadable", name, f"{type(exc).__name__}: {exc}"[:200]))
            continue
        diffs = list(differences(ref, got))
        if diffs:
            more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            out.append((_file_kind(name), name, "; ".join(diffs[:3]) + more))
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, volatile keys left out. Raises ``ValueError`` for a line that
    is not a JSON object."""
    records = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: {exc}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not an object")
            records.append({k: v for k, v in record.items() if not _volatile(k)})
    return records


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def compare_metrics(reference: Path, trial: Path) -> tuple[list[tuple[str, str, str]], int, int]:
    """``(differences, records missing, records duplicated)`` of the trial's ``metrics.jsonl``. Records
    are matched by update, in order (a flush may repeat an update)."""
    ref = read_records(reference / "metrics.jsonl")
    try:
        got = read_records(trial / "metrics.jsonl") if (trial / "metrics.jsonl").exists() else []
    except ValueError as exc:
        return [("metrics unreadable", "metrics.jsonl", str(exc))], 0, 0
    out: list[tuple[str, str, str]] = []
    updates = [r.get("update") for r in got]
    if updates != sorted(updates, key=lambda u: (u is None, u)):
        out.append(("metric record extra", "order", "records are not in update order"))
    by_update_ref: dict[Any, list[dict[str, Any]]] = {}
    by_update_got: dict[Any, list[dict[str, Any]]] = {}
    for r in ref:
        by_update_ref.setdefault(r.get("update"), []).append(r)
    for r in got:
        by_update_got.setdefault(r.get("update"), []).append(r)
    missing = duplicated = 0
    for update in sorted(set(by_update_ref) | set(by_update_got), key=lambda u: (u is None, u)):
        want, have = by_update_ref.get(update, []), by_update_got.get(update, [])
        if not want:
            out.append(("metric record extra", f"update {update}", f"{len(have)} record(s)"))
            continue
        if len(have) < len(want):
            missing += len(want) - len(have)
            out.append(("metric record missing", f"update {update}", f"{len(have)} of {len(want)} records"))
        elif len(have) > len(want):
            duplicated += len(have) - len(want)
            out.append(
                ("metric record duplicated", f"update {update}", f"{len(have)} records, not {len(want)}")
            )
        for w, h in zip(want, have, strict=False):
            for key in sorted(set(w) | set(h)):
                if key not in h:
                    out.append(("metric value", f"{key} @ update {update}", "missing from the record"))
                elif key not in w:
                    out.append(("metric value", f"{key} @ update {update}", "not in the reference's record"))
                elif not _same_value(w[key], h[key]):
                    out.append(("metric value", f"{key} @ update {update}", f"{w[key]!r} vs {h[key]!r}"))
    return out, missing, duplicated


def _summary_status(run: Path) -> str | None:
    try:
        with (run / "summary.yaml").open(encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return None
    return document.get("status") if isinstance(document, dict) else None


def _config(run: Path) -> Any:
    try:
        with (run / "config.yaml").open(encoding="utf-8") as file:
            return yaml.safe_load(file)
    except (OSError, yaml.YAMLError) as exc:
        return f"<unreadable: {exc}>"


def compare_runs(
    reference: Path, trial: Path, *, complete: bool = True
) -> tuple[list[tuple[str, str, str]], int, int]:
    """Every difference of run ``trial`` from run ``reference``, as ``(kind, what, detail)``, with the
    numbers of metric records missing and duplicated."""
    out = compare_checkpoints(reference, trial, complete=complete)
    missing = duplicated = 0
    if complete:
        metrics, missing, duplicated = compare_metrics(reference, trial)
        out += metrics
        want, have = _summary_status(reference), _summary_status(trial)
        if want != have:
            out.append(("summary status", "summary.yaml", f"{want!r} vs {have!r}"))
        if _config(reference) != _config(trial):
            out.append(("config.yaml", "config.yaml", "differs from the reference's"))
    return out, missing, duplicated


# ------------------------------------------------------------------------------------------ the harness


class Harness:
    """Runs the reference, the control and the trials in ``workdir``."""

    def __init__(self, workdir: Path, *, seed: int = 0, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.seed = seed
        self.rng = random.Random(seed)
        self.config_path = workdir / "config.yaml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(config or CONFIG), sort_keys=False))
        self.command = noether_command()
        self.timing: Timing | None = None
        self.ignore: set[str] = set()
        self.deck: list[Fault] = []
        self.end_update = 1
        # measured as the processes run (the machine's load changes): seconds to the first output, and
        # seconds a whole run's training takes from there (a resumed process's time scaled up)
        self.startups: list[float] = []
        self.trainings: list[float] = []

    @staticmethod
    def _recent(samples: list[float]) -> float:
        return statistics.median(samples[-7:])

    def _measure(self, watched: Watched, returncode: int, start_update: int) -> None:
        if watched.first_line_at is None:
            return
        self.startups.append(watched.first_line_at - watched.started)
        if returncode == 0:
            share = max(0.15, 1 - start_update / self.end_update)
            self.trainings.append((time.monotonic() - watched.first_line_at) / share)

    def _train(self, output: Path) -> list[str]:
        return [
            *self.command,
            "train",
            str(self.config_path),
            "--output-dir",
            str(output),
            "--run-id",
            RUN_ID,
        ]

    def uninterrupted(self, name: str) -> Path:
        """Train the config once without interruption into ``workdir/name/run``."""
        output = self.workdir / name
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        run = output / RUN_ID
        watched = Watched(self._train(output), output / "processes.log", run / "checkpoints", set())
        rc, hung = watched.finish(PROCESS_TIMEOUT_S)
        if rc != 0 or hung or watched.first_line_at is None:
            tail = "\n".join(watched.lines[-20:])
            raise RuntimeError(f"the uninterrupted run {name} exited with status {rc}:\n{tail}")
        self._measure(watched, rc, 0)
        if self.timing is None:
            self.timing = Timing(startup=self.startups[-1], training=self.trainings[-1])
            # hidden files a finished run keeps in checkpoints/ are not partial writes
            self.ignore = _temp_names(run / "checkpoints")
        return run

    def deal(self, resuming: bool) -> tuple[Fault, float]:
        """The next fault from the deck, with the random fraction of its window at which it strikes."""
        while True:
            if not self.deck:
                self.deck = list(DECK)
                self.rng.shuffle(self.deck)
            for i, fault in enumerate(self.deck):
                if resuming or fault != "resume":
                    return self.deck.pop(i), self.rng.random()
            self.deck += self.rng.sample(DECK, len(DECK))

    def trial(self, index: int, reference: Path, kills: int) -> Trial:
        """One run, given ``kills`` faults, resumed after each until a process ends by itself."""
        output = self.workdir / f"trial-{index:03d}"
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        run = output / RUN_ID
        trial = Trial(index, run, kills)
        dealt = 0
        while len(trial.processes) < 3 * kills + 5:
            if run.exists() and not any(n.endswith("_trainer.th") for n in checkpoint_files(run)):
                shutil.rmtree(run)  # killed before its first checkpoint: nothing to resume
                mode: Literal["train", "resume", "restart"] = "restart"
            elif run.exists():
                mode = "resume"
            else:
                mode = "train" if not trial.processes else "restart"
            fault: Fault | None = None
            fraction = 0.0
            if dealt < kills:
                fault, fraction = self.deal(resuming=mode == "resume")
                dealt += 1
            record = self._process(trial, output, mode, fault, fraction)
            trial.processes.append(record)
            if record.killed:
                continue
            if record.hung:
                trial.mismatches.append(Mismatch(index, "hung", f"process {record.index}", record.mode))
            elif record.returncode == 0:
                trial.completed = True
            elif mode == "resume" and record.returncode == 2:
                trial.mismatches.append(
                    Mismatch(index, "resume refused", f"process {record.index}", _last_error(record))
                )
            else:
                trial.mismatches.append(
                    Mismatch(
                        index,
                        "exit status",
                        f"process {record.index} exited {record.returncode}",
                        _last_error(record),
                    )
                )
            break
        diffs, trial.records_missing, trial.records_duplicated = compare_runs(
            reference, run, complete=trial.completed
        )
        trial.mismatches += [Mismatch(index, kind, what, detail) for kind, what, detail in diffs]
        return trial

    def _process(
        self,
        trial: Trial,
        output: Path,
        mode: Literal["train", "resume", "restart"],
        fault: Fault | None,
        fraction: float,
    ) -> ProcessRecord:
        run = output / RUN_ID
        start_update = _last_update(run)
        # the training still to come (a resumed process has less): the window of its faults
        left = max(0.15, 1 - start_update / self.end_update) * self._recent(self.trainings)
        args = [*self.command, "train", "--resume", str(run)] if mode == "resume" else self._train(output)
        record = ProcessRecord(trial.index, len(trial.processes), mode, fault, fraction)
        watched = Watched(args, output / "processes.log", run / "checkpoints", self.ignore)
        deadline = watched.started + PROCESS_TIMEOUT_S
        if fault is not None:
            watched.note(f"fault: {fault} at {fraction:.3f} of its window")
        killed = in_commit = False
        if fault == "startup":
            if watched.sleep(fraction * self._recent(self.startups)):
                killed, in_commit = watched.kill()
        elif fault is not None and watched.wait_first_line(deadline):
            if fault == "training":
                if watched.sleep(fraction * left):
                    killed, in_commit = watched.kill()
            elif fault == "resume":
                if watched.sleep(fraction * RESUME_WINDOW_S):
                    killed, in_commit = watched.kill()
            elif watched.sleep(fraction * 0.3 * left):  # commit: then at the next one
                killed, in_commit = watched.kill_in_commit(deadline)
        record.returncode, record.hung = watched.finish(deadline - time.monotonic())
        self._measure(watched, record.returncode, start_update)
        record.signalled = killed
        record.killed = killed and record.returncode == -signal.SIGKILL
        record.in_commit = in_commit and record.killed
        if record.killed:
            printed = bool(watched.lines)  # all read by now, and all written before the kill
            record.moment = "training" if fault == "startup" and printed else fault if printed else "startup"
        record.seconds = time.monotonic() - watched.started
        record.output = watched.lines[-30:]
        return record


def _last_update(run: Path) -> int:
    """The update of the last record in ``run``'s ``metrics.jsonl`` (0 if none)."""
    try:
        with (run / "metrics.jsonl").open(encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            return int(json.loads(line).get("update", 0))
    return 0


def _last_error(record: ProcessRecord) -> str:
    lines = [line for line in record.output if line.strip()]
    return f"exit status {record.returncode}: " + (lines[-1][:300] if lines else "no output")


def run_harness(
    kills: int,
    seed: int = 0,
    workdir: Path | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    max_kills_per_run: int = MAX_KILLS_PER_RUN,
    control: bool = True,
    progress: bool = False,
) -> Report:
    """Run the reference, the control (unless ``control`` is false: a caller with an uninterrupted run
    of its own compares that) and trials until ``kills`` kills have landed; see the module's
    documentation. ``workdir`` keeps every run (a temporary folder, removed afterwards, if ``None``)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="noether-kill-")))
        harness = Harness(workdir, seed=seed, config=config)
        reference = harness.uninterrupted("reference")
        found = compare_runs(reference, harness.uninterrupted("control"))[0] if control else None
        status = _summary_status(reference) or "?"
        updates = harness.end_update = max(1, _last_update(reference))
        assert harness.timing is not None
        report = Report(
            seed=seed,
            kills_wanted=kills,
            reference=reference,
            reference_status=status,
            reference_updates=updates,
            control=None if found is None else [Mismatch(-1, k, what, detail) for k, what, detail in found],
            trials=[],
            timing=harness.timing,
        )
        while report.kills < kills:
            count = min(harness.rng.randint(1, max_kills_per_run), kills - report.kills)
            trial = harness.trial(len(report.trials), reference, count)
            report.trials.append(trial)
            if progress:
                kinds = sorted({m.kind for m in trial.mismatches})
                print(
                    f"run {trial.index}: {trial.kills} kills, {len(trial.processes)} processes: "
                    + ("identical" if trial.identical else "; ".join(kinds) or "incomplete"),
                    file=sys.stderr,
                    flush=True,
                )
        report.seconds = time.monotonic() - started
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/kill_resume.py",
        description="SIGKILL real noether train processes at random moments, resume them until done, "
        "and compare every run with an uninterrupted one. Exit status 0 when every run ended identical.",
    )
    parser.add_argument("--kills", type=int, default=100, help="kills to land in all (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults drawn (default 0)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the runs here (default: a temporary folder)"
    )
    parser.add_argument("--max-kills-per-run", type=int, default=MAX_KILLS_PER_RUN)
    parser.add_argument("--details", action="store_true", help="list every mismatch")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    report = run_harness(
        args.kills, args.seed, args.workdir, max_kills_per_run=args.max_kills_per_run, progress=True
    )
    print(report.table())
    if args.details:
        print("\nmismatches:")
        for m in (report.control or []) + report.mismatches:
            print(f"  {m}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary_figures(report), indent=2) + "\n")
    return 0 if report.all_identical else 1


def summary_figures(report: Report) -> dict[str, Any]:
    """The report's figures as plain data."""
    return {
        "seed": report.seed,
        "kills": report.kills,
        "kills_in_commit": report.kills_in_commit,
        "kills_in_resume": report.kills_in_resume,
        "kills_by_moment": dict(report.kills_by_moment()),
        "resumes": report.resumes,
        "restarts": report.restarts,
        "runs": len(report.runs),
        "runs_without_a_kill": len(report.trials) - len(report.runs),
        "runs_completed": report.completed,
        "runs_identical": report.identical,
        "records_missing": report.records_missing,
        "records_duplicated": report.records_duplicated,
        "mismatches_by_kind": {
            k: {"runs": r, "occurrences": n} for k, (r, n) in report.mismatches_by_kind().items()
        },
        "control_identical": None if report.control is None else not report.control,
        "seconds": round(report.seconds, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
