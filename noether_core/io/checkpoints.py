"""Atomic checkpoint files: writing, loading and pruning the ``checkpoints/`` directory of a run.

Every file is written to a temporary file beside its target, synced to disk and renamed onto the target
(:func:`atomic_torch_save`), so a kill, a crash or a full disk at any moment leaves the previous file
intact and loadable. Everything written is checked to load with ``torch.load(weights_only=True)``:
tensors, ``dict``/``OrderedDict``, ``list``, ``tuple``, ``torch.Size``, ``int``, ``float``, ``bool``,
``str``, ``None``, ``torch.dtype`` and ``torch.device``; a plugin state holding anything else (a NumPy
scalar, a custom class) is refused when saved, not when the run is resumed.

Only rank 0 should write; the writer does not check the rank.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from noether_core.errors import CheckpointLoadError, CheckpointWriteError
from noether_core.io.paths import (
    CheckpointPart,
    RunPaths,
    checkpoint_file_name,
    find_checkpoint_tags,
    parse_position_tag,
)
from noether_core.run.counter import Counter

Position = Mapping[str, int] | Counter
"""Where training was when a checkpoint was taken: ``{"epoch", "update", "sample"}`` or the counter."""

_TMP_SUFFIX = ".tmp"
_RESERVED_MODEL_KEYS = frozenset({"state_dict", "checkpoint_tag", "training_iteration", "run_id", "ema"})
_RESERVED_TRAINER_KEYS = frozenset({"checkpoint_tag", "training_iteration", "run_id"})
_SAFE_LEAVES = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _temp_path(path: Path) -> Path:
    # A dot-name beside the target: same filesystem (so os.replace is atomic), hidden from tag listings.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for syncing on Windows; renames are durable there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@contextlib.contextmanager
def _without_crc32() -> Iterator[None]:
    """torch.save without the CRC-32 of each zip record: ``torch.load`` never checks it (a flipped byte
    loads silently), and computing it is most of the CPU time of saving large tensors (a 200 MB save:
    about 3x the raw write with it, 1.1x without; ``benchmarks/checkpoint_save.py``)."""
    get = getattr(torch.serialization, "get_crc32_options", None)  # torch >= 2.6
    set_ = getattr(torch.serialization, "set_crc32_options", None)
    if get is None or set_ is None:
        yield
        return
    previous = get()
    set_(False)
    try:
        yield
    finally:
        set_(previous)


def atomic_torch_save(obj: object, path: Path | str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    The data goes to a temporary file in the same directory, which is flushed, fsynced and then renamed
    onto ``path``; the directory is fsynced after the rename. On any failure (a full disk, an object that
    cannot be pickled) the temporary file is removed, the previous file at ``path`` is left as it was and
    :class:`~noether_core.errors.CheckpointWriteError` names the path and the cause. ``KeyboardInterrupt``
    and other non-``Exception`` interrupts clean up the same way and propagate unchanged.
    """
    target = Path(path)
    tmp = _temp_path(target)
    try:
        # O_EXCL: never write through a name someone else created; 0o666 lets the umask decide, unlike
        # tempfile.mkstemp's 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as file, _without_crc32():
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(error, Exception):
            raise CheckpointWriteError(target, _describe(error)) from error
        raise
    try:
        _fsync_directory(target.parent)
    except OSError as error:
        raise CheckpointWriteError(
            target, f"the file was replaced but its directory could not be synced ({_describe(error)})"
        ) from error


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU with ``torch.load(weights_only=True)``.

    Raises :class:`~noether_core.errors.CheckpointLoadError` (never a raw torch error) when the file is
    missing, truncated or corrupt, holds objects other than tensors and plain containers, or is not a
    dict.
    """
    target = Path(path)
    if not target.exists():
        raise CheckpointLoadError(target, "the file does not exist")
    if not target.is_file():
        raise CheckpointLoadError(target, "it is not a regular file")
    try:
        loaded = torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Weights only" in str(error):
            raise CheckpointLoadError(
                target,
                "it holds objects other than tensors and plain containers, which weights_only loading "
                f"refuses ({_describe(error)})",
            ) from error
        raise CheckpointLoadError(target, f"the file is corrupt ({_describe(error)})") from error
    except Exception as error:  # torch raises many unrelated types for damaged files
        raise CheckpointLoadError(
            target, f"the file is truncated or corrupt, not a readable torch checkpoint ({_describe(error)})"
        ) from error
    if not isinstance(loaded, dict):
        raise CheckpointLoadError(target, f"expected a dict, found {type(loaded).__name__}")
    return loaded


def _iter_unsafe(obj: object, where: str, seen: set[int]) -> Iterator[str]:
    """Yield ``where: type`` for every value weights_only loading would refuse."""
    if isinstance(obj, torch.Tensor) or type(obj) in _SAFE_LEAVES:
        return
    if id(obj) in seen:
        return
    kind = type(obj)
    if kind is dict or kind is collections.OrderedDict:
        assert isinstance(obj, dict)
        seen.add(id(obj))
        for key, value in obj.items():
            if type(key) not in _SAFE_LEAVES:
                yield f"{where}: key {key!r} of type {type(key).__qualname__}"
            yield from _iter_unsafe(value, f"{where}.{key}" if where else str(key), seen)
    elif kind is list or kind is tuple or kind is torch.Size:
        assert isinstance(obj, list | tuple)
        seen.add(id(obj))
        for index, value in enumerate(obj):
            yield from _iter_unsafe(value, f"{where}[{index}]", seen)
    else:
        yield f"{where or '<root>'}: {kind.__module__}.{kind.__qualname__}"


def unsafe_values(obj: object, where: str = "") -> list[str]:
    """``"place: type"`` for every value in ``obj`` that ``torch.load(weights_only=True)`` would refuse
    (``where`` names ``obj`` itself); empty when a checkpoint can hold all of it."""
    return list(_iter_unsafe(obj, where, set()))


def check_weights_only_safe(obj: object, path: Path | str = "<checkpoint>") -> None:
    """Raise :class:`~noether_core.errors.CheckpointWriteError` when ``obj`` would not load with
    ``torch.load(weights_only=True)``, naming where in ``obj`` each offending value sits (exact types
    only: a ``namedtuple``, an ``IntEnum`` or a NumPy scalar is refused)."""
    problems = unsafe_values(obj)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointWriteError(
            path,
            "only tensors, dicts, lists, tuples, ints, floats, bools, strs, None, torch dtypes and "
            f"devices can be stored (convert the rest, e.g. with .item() or .tolist()); found {shown}",
        )


def _position_dict(position: Position) -> dict[str, int]:
    if isinstance(position, Counter):
        return {"epoch": position.epoch, "update": position.update, "sample": position.sample}
    missing = {"epoch", "update", "sample"} - set(position)
    if missing:
        raise ValueError(f"position needs epoch, update and sample; missing {', '.join(sorted(missing))}")
    out = {name: position[name] for name in ("epoch", "update", "sample")}
    for name, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"position {name} must be an int >= 0, got {value!r}")
    return out


class CheckpointWriter:
    """Writes a run's checkpoint files under ``paths.checkpoints`` (see :mod:`noether_core.io.paths` for
    the names). Each ``save_*`` returns the path written; each write is atomic.

    File contents, all loadable with :func:`load_checkpoint`:

    * model / EMA: ``{"state_dict", "checkpoint_tag", "training_iteration", "run_id"}`` plus ``"ema"``
      (the factor) for EMA weights and any ``extra`` entries;
    * optim: ``{"state_dict", "checkpoint_tag", "training_iteration", "run_id"}``;
    * trainer: the trainer's state entries plus ``"checkpoint_tag"``, ``"training_iteration"``,
      ``"run_id"``.

    ``training_iteration`` is ``{"epoch", "update", "sample"}`` of ``position``: for ``latest`` and
    ``last`` it tells where the file came from. A resume should check that the parts it loads agree on
    it, since they are separate files written one after another.
    """

    def __init__(self, paths: RunPaths, run_id: str | None = None) -> None:
        self.paths = paths
        self.run_id = paths.run_id if run_id is None else run_id

    def _write(self, payload: dict[str, Any], path: Path) -> Path:
        check_weights_only_safe(payload, path)
        atomic_torch_save(payload, path)
        return path

    def _envelope(self, tag: str, position: Position) -> dict[str, Any]:
        return {
            "checkpoint_tag": str(tag),
            "training_iteration": _position_dict(position),
            "run_id": self.run_id,
        }

    def save_model(
        self,
        model_name: str,
        tag: str,
        state_dict: Mapping[str, Any],
        *,
        position: Position,
        ema: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the weights of ``model_name`` (its ``state_dict()``) as ``{model}_cp={tag}_model.th``, or
        as ``{model}_ema={ema}_cp={tag}_model.th`` for EMA weights. ``extra`` entries are added to the
        file; they may not reuse the standard keys."""
        path = self.paths.checkpoint_file(model_name, tag, "model", ema)
        payload: dict[str, Any] = {"state_dict": state_dict, **self._envelope(tag, position)}
        if ema is not None:
            payload["ema"] = float(ema)
        if extra:
            clashes = sorted(_RESERVED_MODEL_KEYS & set(extra))
            if clashes:
                raise ValueError(f"extra entries may not replace {', '.join(clashes)}")
            payload.update(extra)
        return self._write(payload, path)

    def save_optim(
        self, model_name: str, tag: str, state_dict: Mapping[str, Any], *, position: Position
    ) -> Path:
        """Write the optimizer state of ``model_name`` (its ``state_dict()``) as
        ``{model}_cp={tag}_optim.th``."""
        path = self.paths.checkpoint_file(model_name, tag, "optim")
        return self._write({"state_dict": state_dict, **self._envelope(tag, position)}, path)

    def save_trainer(
        self, model_name: str, tag: str, state: Mapping[str, Any], *, position: Position
    ) -> Path:
        """Write the trainer's state (``callback_state_dicts``, ``grad_scaler``, ...) as
        ``{model}_cp={tag}_trainer.th``. A ``training_iteration`` entry in ``state`` must equal
        ``position``."""
        path = self.paths.checkpoint_file(model_name, tag, "trainer")
        envelope = self._envelope(tag, position)
        for key in _RESERVED_TRAINER_KEYS & set(state):
            if state[key] != envelope[key]:
                raise ValueError(
                    f"trainer state entry {key!r} ({state[key]!r}) disagrees with the writer's "
                    f"({envelope[key]!r})"
                )
        return self._write({**state, **envelope}, path)

    def tags(self, model_name: str) -> list[str]:
        """Tags with files of ``model_name``: position tags oldest first, then the others by name."""
        return find_checkpoint_tags(self.paths.checkpoints, model_name)

    def _files_of_tag(self, model_name: str, tag: str) -> list[Path]:
        directory = self.paths.checkpoints
        parts: tuple[CheckpointPart, ...] = ("model", "optim", "trainer")
        files = [directory / checkpoint_file_name(model_name, tag, part) for part in parts]
        ema_prefix = f"{model_name}_ema="
        ema_suffix = f"_cp={tag}_model.th"
        files += [
            entry
            for entry in directory.iterdir()
            if entry.name.startswith(ema_prefix) and entry.name.endswith(ema_suffix)
        ]
        return files

    def prune(self, model_name: str, keep_last_n: int) -> list[Path]:
        """Delete the files (every part, EMA weights included) of all but the newest ``keep_last_n``
        position tags (``E{e}_U{u}_S{s}``, ordered by update) of ``model_name``. Other tags (``latest``,
        ``last``, ``best_model.*``) are never touched. Returns the deleted paths."""
        if isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 0:
            raise ValueError(f"keep_last_n must be an int >= 0, got {keep_last_n!r}")
        positions = [tag for tag in self.tags(model_name) if parse_position_tag(tag) is not None]
        doomed = positions[: max(len(positions) - keep_last_n, 0)]
        deleted: list[Path] = []
        for tag in doomed:
            for file in self._files_of_tag(model_name, tag):
                try:
                    file.unlink()
                except FileNotFoundError:
                    continue
                deleted.append(file)
        return deleted

    def discard_partial_writes(self) -> list[Path]:
        """Delete temporary files left in ``checkpoints/`` by a writer that was killed mid-save.

        Call it once when a run starts, before anything writes; never while another process may be
        writing checkpoints into the same directory. Returns the deleted paths.
        """
        deleted: list[Path] = []
        for entry in self.paths.checkpoints.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                deleted.append(entry)
        return deleted


__all__ = [
    "CheckpointWriter",
    "Position",
    "atomic_torch_save",
    "check_weights_only_safe",
    "load_checkpoint",
    "unsafe_values",
]
