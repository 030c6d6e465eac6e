"""Atomic checkpoint files: writing, loading and pruning the ``checkpoints/`` directory of a run.

Every file is written to a temporary file beside its target, synced to disk and renamed onto the target
(:func:`atomic_torch_save`), so a kill, a crash or a full disk at any moment leaves the previous file
intact and loadable. Everything written is checked to load with ``torch.load(weights_only=True)``:
tensors, ``dict``/``OrderedDict``, ``list``, ``tuple``, ``torch.Size``, ``int``, ``float``, ``bool``,
``str``, ``None``, ``torch.dtype`` and ``torch.device``; a plugin state holding anything else (a NumPy
scalar, a custom class) is refused when saved, not when the run is resumed.

A checkpoint tag is a set of files (every model part's weights, EMA weights, the optimizer and the
trainer state) that :class:`CheckpointWriter` makes visible as a whole: the parts of a set are written
to temporary files and committed together by one atomic rename of a journal (see
:mod:`noether_core.io.checkpoint_journal`), so a kill at any moment leaves the tag's previous set or its
new one, never a mix, and the writer's :meth:`~CheckpointWriter.recover` (run whenever checkpoints are
opened to resume, evaluate or load) finishes or discards what a killed writer left.

Only rank 0 should write; the writer does not check the rank.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import torch

from noether_core.errors import CheckpointLoadError, CheckpointWriteError
from noether_core.io import checkpoint_journal
from noether_core.io.checkpoint_journal import describe as _describe
from noether_core.io.checkpoint_journal import fsync_directory as _fsync_directory
from noether_core.io.checkpoint_journal import temp_path as _temp_path
from noether_core.io.paths import (
    CheckpointPart,
    RunPaths,
    checkpoint_file_name,
    find_checkpoint_tags,
    parse_position_tag,
    sort_tags,
)
from noether_core.run.counter import Counter

Position = Mapping[str, int] | Counter
"""Where training was when a checkpoint was taken: ``{"epoch", "update", "sample"}`` or the counter."""

_RESERVED_MODEL_KEYS = frozenset({"state_dict", "checkpoint_tag", "training_iteration", "run_id", "ema"})
_RESERVED_TRAINER_KEYS = frozenset({"checkpoint_tag", "training_iteration", "run_id"})
_SAFE_LEAVES = (bool, int, float, str, type(None), torch.dtype, torch.device)


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
    tmp = _write_temp(obj, target)
    try:
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


#: Bytes of a checkpoint file written between two requests to the operating system to start writing
#: them out (:class:`_WritebackFile`).
WRITEBACK_BYTES = 1 << 20


class _WritebackFile:
    """The file ``torch.save`` writes a checkpoint into: after every :data:`WRITEBACK_BYTES` it asks the
    operating system to start writing what came so far to the disk (``posix_fadvise(DONTNEED)``, which
    on Linux starts the writeback without waiting for it), so the disk works while the serializer
    produces the rest and the final ``fsync`` waits for the last part only. Left alone, the kernel
    holds the data until that ``fsync``, and serializing and writing out take turns: a 64 MB save took
    1.06x-1.11x a raw write of its bytes that way, 0.78x-0.86x with this
    (``benchmarks/checkpoint_save.py``, docs/callbacks/checkpointing.md)."""

    __slots__ = ("_advise", "_file", "_started", "_written")

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._advise = getattr(os, "posix_fadvise", None)  # not on macOS or Windows: plain writes there
        self._started = 0
        self._written = 0

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self._written += written
        if self._advise is not None and self._written - self._started >= WRITEBACK_BYTES:
            self._file.flush()
            # a hint: where the file system does not take it, the final fsync writes everything
            with contextlib.suppress(OSError):
                self._advise(self._file.fileno(), self._started, self._written - self._started, _DONTNEED)
            self._started = self._written
        return written

    def flush(self) -> None:
        self._file.flush()


_DONTNEED: int = getattr(os, "POSIX_FADV_DONTNEED", 4)


def _write_temp(obj: object, target: Path) -> Path:
    """``torch.save(obj)`` into a new, synced temporary file beside ``target``; returns its path. On any
    failure nothing is left behind and an ``Exception`` becomes :class:`CheckpointWriteError`."""
    tmp, file = _write_unsynced(obj, target)
    _sync_and_close(file, tmp, target)
    return tmp


def _write_unsynced(obj: object, target: Path) -> tuple[Path, BinaryIO]:
    """``torch.save(obj)`` into a new temporary file beside ``target``, written and flushed but not yet
    synced: returns its path and the open file, for :func:`_sync_and_close`. On any failure nothing is
    left behind and an ``Exception`` becomes :class:`CheckpointWriteError`."""
    tmp = _temp_path(target)
    file = None
    try:
        # O_EXCL: never write through a name someone else created; 0o666 lets the umask decide, unlike
        # tempfile.mkstemp's 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        file = os.fdopen(fd, "wb")
        with _without_crc32():
            # it has the two methods torch.save calls on a file: write and flush
            torch.save(obj, cast("IO[bytes]", _WritebackFile(file)))
        file.flush()
    except BaseException as error:
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        _removed(tmp)
        if isinstance(error, Exception):
            raise CheckpointWriteError(target, _describe(error)) from error
        raise
    return tmp, file


def _sync_and_close(file: BinaryIO, tmp: Path, target: Path) -> None:
    """Sync ``file`` (the temporary file ``tmp`` of ``target``) to the disk and close it. On a failure
    the file is removed and an ``Exception`` becomes :class:`CheckpointWriteError`."""
    try:
        with file:
            os.fsync(file.fileno())
    except BaseException as error:
        _removed(tmp)
        if isinstance(error, Exception):
            raise CheckpointWriteError(target, _describe(error)) from error
        raise


class _BackgroundSync(threading.Thread):
    """The ``fsync`` and close of one part's temporary file (:func:`_sync_and_close`), in a thread of its
    own: started when the part is written, joined before the commit, so no thread outlives a set (a
    process that forks afterwards, such as a ``DataLoader`` starting its workers, forks a
    single-threaded process as before)."""

    def __init__(self, file: BinaryIO, tmp: Path, target: Path) -> None:
        super().__init__(name=f"noether-fsync {target.name}")
        self._args = (file, tmp, target)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            _sync_and_close(*self._args)
        except BaseException as error:  # handed to the committing thread by _settle
            self.error = error


def _removed(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


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


_CORE_PARTS: tuple[CheckpointPart, ...] = ("model", "optim", "trainer")


class CheckpointSet:
    """The files of one checkpoint tag being written: each ``save_*`` writes its part to a temporary
    file, and the whole set becomes the tag's at once when it is committed (see
    :meth:`CheckpointWriter.checkpoint_set`). Each ``save_*`` returns the path the part will have once
    its bytes are written (the caller may change the tensors then); the file's ``fsync`` runs in a
    background thread meanwhile, so the disk writes one part while the next is serialized, and the
    commit waits for every part's sync before its commit point. A part that cannot be synced fails
    the commit with :class:`~noether_core.errors.CheckpointWriteError` naming it, and nothing of the
    set becomes visible.

    File contents, all loadable with :func:`load_checkpoint`:

    * model / EMA: ``{"state_dict", "checkpoint_tag", "training_iteration", "run_id"}`` plus ``"ema"``
      (the factor) for EMA weights and any ``extra`` entries;
    * optim: ``{"state_dict", "checkpoint_tag", "training_iteration", "run_id"}``;
    * trainer: the trainer's state entries plus ``"checkpoint_tag"``, ``"training_iteration"``,
      ``"run_id"``.

    ``training_iteration`` is ``{"epoch", "update", "sample"}`` of ``position``: for ``latest`` and
    ``last`` it tells where the file came from.
    """

    def __init__(self, writer: CheckpointWriter, tag: str) -> None:
        checkpoint_file_name("model", tag, "model")  # a tag that cannot name a file fails before any write
        self.writer = writer
        self.tag = tag
        #: whether the set replaces the tag's weights, optimizer and trainer files it does not rewrite
        self.replaces = False
        self.failed = False
        self._staged: dict[Path, Path] = {}  # target -> its temporary file
        self._syncing: dict[Path, _BackgroundSync] = {}  # target -> the sync of its temporary file

    @property
    def paths(self) -> list[Path]:
        """The files this set writes, in the order they were saved."""
        return list(self._staged)

    def _envelope(self, position: Position) -> dict[str, Any]:
        return {
            "checkpoint_tag": str(self.tag),
            "training_iteration": _position_dict(position),
            "run_id": self.writer.run_id,
        }

    def _stage(self, payload: dict[str, Any], target: Path) -> Path:
        check_weights_only_safe(payload, target)
        temp, file = _write_unsynced(payload, target)
        previous = self._staged.pop(target, None)
        if previous is not None:  # the same part saved twice in one set: the later one counts
            self._settle(target)
            previous.unlink(missing_ok=True)
        self._staged[target] = temp
        # the sync runs in a thread (fsync lets go of the GIL) while the caller serializes the next part;
        # the commit waits for it (see _wait_synced)
        sync = _BackgroundSync(file, temp, target)
        try:
            sync.start()
        except RuntimeError:  # no thread to be had (the interpreter is shutting down): sync here
            _sync_and_close(file, temp, target)
        else:
            self._syncing[target] = sync
        return target

    def _settle(self, target: Path) -> BaseException | None:
        """Wait for the sync of ``target``'s temporary file, if one runs; its error, if it failed."""
        sync = self._syncing.pop(target, None)
        if sync is None:
            return None
        sync.join()
        return sync.error

    def _wait_synced(self) -> None:
        """Wait until every part's temporary file is on the disk; raises the first part's failure
        (:class:`CheckpointWriteError`) after all are done."""
        errors = [error for error in map(self._settle, list(self._syncing)) if error is not None]
        if errors:
            raise errors[0]

    def save_model(
        self,
        model_name: str,
        state_dict: Mapping[str, Any],
        *,
        position: Position,
        ema: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """The weights of ``model_name`` (its ``state_dict()``) as ``{model}_cp={tag}_model.th``, or as
        ``{model}_ema={ema}_cp={tag}_model.th`` for EMA weights. ``extra`` entries are added to the
        file; they may not reuse the standard keys."""
        path = self.writer.paths.checkpoint_file(model_name, self.tag, "model", ema)
        payload: dict[str, Any] = {"state_dict": state_dict, **self._envelope(position)}
        if ema is not None:
            payload["ema"] = float(ema)
        if extra:
            clashes = sorted(_RESERVED_MODEL_KEYS & set(extra))
            if clashes:
                raise ValueError(f"extra entries may not replace {', '.join(clashes)}")
            payload.update(extra)
        return self._stage(payload, path)

    def save_optim(self, model_name: str, state_dict: Mapping[str, Any], *, position: Position) -> Path:
        """The optimizer state of ``model_name`` (its ``state_dict()``) as ``{model}_cp={tag}_optim.th``."""
        path = self.writer.paths.checkpoint_file(model_name, self.tag, "optim")
        return self._stage({"state_dict": state_dict, **self._envelope(position)}, path)

    def save_trainer(self, model_name: str, state: Mapping[str, Any], *, position: Position) -> Path:
        """The trainer's state (``callback_state_dicts``, ``grad_scaler``, ...) as
        ``{model}_cp={tag}_trainer.th``. A ``training_iteration`` entry in ``state`` must equal
        ``position``."""
        path = self.writer.paths.checkpoint_file(model_name, self.tag, "trainer")
        envelope = self._envelope(position)
        for key in _RESERVED_TRAINER_KEYS & set(state):
            if state[key] != envelope[key]:
                raise ValueError(
                    f"trainer state entry {key!r} ({state[key]!r}) disagrees with the writer's "
                    f"({envelope[key]!r})"
                )
        return self._stage({**state, **envelope}, path)

    def _writes_core(self) -> bool:
        return any("_ema=" not in path.name for path in self._staged)

    def _discard(self) -> None:
        for target in list(self._syncing):  # the files are closed before they are removed
            self._settle(target)
        for temp in self._staged.values():
            _removed(temp)
        self._staged.clear()


class CheckpointWriter:
    """Writes a run's checkpoint sets under ``paths.checkpoints`` (see :mod:`noether_core.io.paths` for
    the names).

    Write a tag's parts in a set, which becomes visible as a whole when the block ends::

        with writer.checkpoint_set("latest") as parts:
            parts.save_model("model", model.state_dict(), position=counter)
            parts.save_optim("model", optimizer.state_dict(), position=counter)
            parts.save_trainer("model", state, position=counter)

    After the commit the tag holds exactly the weights, optimizer and trainer files of the set: a file of
    the tag's previous set that the new one does not rewrite (an optimizer file, when the new set has
    none) is deleted in the same commit. EMA weights are the exception: they are replaced file by file,
    since EMA entries save them on their own schedules. A block left by an exception commits nothing.

    Inside :meth:`deferred_commit` (the trainer opens one around each step's events, ``after_training``
    and the save on a signal) sets are committed when that block ends, all in one commit, and a second
    ``checkpoint_set`` of the same tag adds to the first: the weights the CheckpointCallback saves and
    the EMA weights an EmaCallback saves at the same update become visible together.

    The ``save_model``, ``save_optim`` and ``save_trainer`` methods of the writer write one part: into
    the set of that tag being written, else as a set of their own that adds the file to the tag.

    ``before_commit`` (the trainer sets it) runs before every commit: the metrics logged so far reach
    the disk before the checkpoint that a resume would start from. ``guard`` is a context manager
    factory entered while a set is written and committed (a signal handler may defer a second signal
    there; a second signal cannot damage a set, only end the process).
    """

    def __init__(self, paths: RunPaths, run_id: str | None = None) -> None:
        self.paths = paths
        self.run_id = paths.run_id if run_id is None else run_id
        self.before_commit: Callable[[], object] | None = None
        self.guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
        self._open: dict[str, CheckpointSet] = {}  # sets being written, or waiting for their commit
        self._batch: list[CheckpointSet] | None = None
        self._doomed: list[Path] = []  # files pruned, deleted with the batch's commit
        self._recovered = False
        self._directory_made = False

    # ------------------------------------------------------------------------------------ sets

    @property
    def committing(self) -> bool:
        """Whether a set is being written or waits for its commit."""
        return bool(self._open)

    @contextlib.contextmanager
    def checkpoint_set(self, tag: str) -> Iterator[CheckpointSet]:
        """A set of files of ``tag`` (see the class docstring): committed when the block ends, or when
        the enclosing :meth:`deferred_commit` ends."""
        joined = self._open.get(tag)
        if joined is not None:
            joined.replaces = True
            try:
                yield joined
            except BaseException:
                joined.failed = True
                raise
            return
        parts = CheckpointSet(self, tag)
        parts.replaces = True
        self._open[tag] = parts
        with self.guard():
            try:
                yield parts
            except BaseException:
                del self._open[tag]
                parts._discard()
                raise
            if self._batch is not None:
                self._batch.append(parts)
            else:
                del self._open[tag]
                self._commit([parts])

    def deferred_commit(self) -> AbstractContextManager[None]:
        """Commit the sets written inside the block together when it ends (nested blocks: when the
        outermost ends); an exception leaving the block commits none of them."""
        return _DeferredCommit(self)

    def _end_batch(self, batch: list[CheckpointSet], *, commit: bool) -> None:
        self._batch = None
        if not batch and not self._doomed:  # the usual step: no checkpoint written, nothing pruned
            self._made_directory()
            return
        doomed, self._doomed = self._doomed, []
        for parts in batch:
            self._open.pop(parts.tag, None)
        good = [parts for parts in batch if not parts.failed]
        for parts in batch:
            if parts.failed or not commit:
                parts._discard()
        if commit:
            self._commit(good, doomed)

    def _commit(self, sets: list[CheckpointSet], doomed: list[Path] | None = None) -> None:
        staged = [(temp, target) for parts in sets for target, temp in parts._staged.items()]
        delete = list(doomed or ())
        if not staged and not delete:
            self._made_directory()
            return
        directory = self.paths.checkpoints
        try:
            for parts in sets:
                parts._wait_synced()
            if not self._recovered:  # an older, unfinished commit must land before this one
                self.recover()
            if staged and self.before_commit is not None:
                self.before_commit()
            written = {target for _, target in staged}
            for parts in sets:
                if parts.replaces and parts._writes_core():
                    delete += checkpoint_journal.stale_files(directory, parts.tag, parts.paths)
            delete = sorted({path for path in delete if path not in written})
        except BaseException:  # before the commit point: nothing became visible
            for parts in sets:
                parts._discard()
            raise
        try:
            checkpoint_journal.commit(directory, staged, delete)
        except CheckpointWriteError:  # the journal could not be written: nothing became visible
            for parts in sets:
                parts._discard()
            raise
        # any other failure came after the commit point: the temporary files stay for the roll-forward
        for parts in sets:
            parts._staged.clear()

    def _made_directory(self) -> None:
        """``checkpoints/`` exists once a commit point was reached, as it always did; created once,
        not at every step (``paths.checkpoints`` is a ``mkdir`` system call)."""
        if not self._directory_made:
            self.paths.checkpoints  # noqa: B018 (the property creates the directory)
            self._directory_made = True

    def _part(self, tag: str) -> tuple[CheckpointSet, bool]:
        """The set a single ``save_*`` of ``tag`` goes to, and whether it must be committed at once."""
        parts = self._open.get(tag)
        if parts is not None:
            return parts, False
        parts = CheckpointSet(self, tag)
        if self._batch is not None:
            self._open[tag] = parts
            self._batch.append(parts)
            return parts, False
        return parts, True

    def _save_one(self, tag: str, save: Callable[[CheckpointSet], Path]) -> Path:
        parts, alone = self._part(tag)
        if not alone:
            return save(parts)
        with self.guard():
            try:
                path = save(parts)
            except BaseException:
                parts._discard()
                raise
            self._commit([parts])
        return path

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
        """Write the weights of ``model_name`` to tag ``tag``: see :meth:`CheckpointSet.save_model`."""
        return self._save_one(
            tag, lambda s: s.save_model(model_name, state_dict, position=position, ema=ema, extra=extra)
        )

    def save_optim(
        self, model_name: str, tag: str, state_dict: Mapping[str, Any], *, position: Position
    ) -> Path:
        """Write the optimizer state of ``model_name`` to tag ``tag``: see
        :meth:`CheckpointSet.save_optim`."""
        return self._save_one(tag, lambda s: s.save_optim(model_name, state_dict, position=position))

    def save_trainer(
        self, model_name: str, tag: str, state: Mapping[str, Any], *, position: Position
    ) -> Path:
        """Write the trainer's state to tag ``tag``: see :meth:`CheckpointSet.save_trainer`."""
        return self._save_one(tag, lambda s: s.save_trainer(model_name, state, position=position))

    # ------------------------------------------------------------------------------------ the directory

    def recover(self) -> list[Path]:
        """Finish the commits a killed writer left (roll them forward) and delete the temporary files of
        the sets it never committed; the files of a process still running are left alone. Returns the
        deleted temporary files. Raises :class:`~noether_core.errors.CheckpointLoadError` for a commit
        journal that cannot be read."""
        self._recovered = True
        # not ``paths.checkpoints``, which creates the directory: opening a run changes nothing on disk
        return checkpoint_journal.recover(self.paths.root / "checkpoints")

    def tags(self, model_name: str) -> list[str]:
        """Tags with files of ``model_name``: position tags oldest first, then the others by name."""
        return find_checkpoint_tags(self.paths.checkpoints, model_name)

    def _files_of_tag(self, model_name: str, tag: str) -> list[Path]:
        directory = self.paths.checkpoints
        files = [directory / checkpoint_file_name(model_name, tag, part) for part in _CORE_PARTS]
        ema_prefix = f"{model_name}_ema="
        ema_suffix = f"_cp={tag}_model.th"
        files += [
            entry
            for entry in directory.iterdir()
            if entry.name.startswith(ema_prefix) and entry.name.endswith(ema_suffix)
        ]
        return [file for file in files if file.exists()]

    def prune(self, model_name: str, keep_last_n: int) -> list[Path]:
        """Delete the files (every part, EMA weights included) of all but the newest ``keep_last_n``
        position tags (``E{e}_U{u}_S{s}``, ordered by update) of ``model_name``, in one commit. Other tags
        (``latest``, ``last``, ``best_model.*``) are never touched. Sets waiting in a
        :meth:`deferred_commit` count as written, and the files go with their commit. Returns the paths
        deleted (or to be deleted)."""
        if isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 0:
            raise ValueError(f"keep_last_n must be an int >= 0, got {keep_last_n!r}")
        tags = set(self.tags(model_name))
        prefixes = (f"{model_name}_cp=", f"{model_name}_ema=")
        tags |= {
            parts.tag
            for parts in self._open.values()
            if any(path.name.startswith(prefixes) for path in parts.paths)
        }
        positions = [tag for tag in sort_tags(tags) if parse_position_tag(tag) is not None]
        doomed_tags = positions[: max(len(positions) - keep_last_n, 0)]
        doomed = [file for tag in doomed_tags for file in self._files_of_tag(model_name, tag)]
        if self._batch is not None:
            self._doomed += doomed
        else:
            checkpoint_journal.commit(self.paths.checkpoints, [], doomed)
        return doomed

    def delete_tag(self, model_name: str, tag: str) -> list[Path]:
        """Delete every file (every part, EMA weights included) of ``tag`` for ``model_name``, in one
        commit; inside :meth:`deferred_commit` the files go with the batch's commit, like :meth:`prune`.
        Returns the paths deleted (or to be deleted)."""
        checkpoint_file_name(model_name, tag, "model")
        doomed = self._files_of_tag(model_name, tag)
        if self._batch is not None:
            self._doomed += doomed
        elif doomed:
            checkpoint_journal.commit(self.paths.checkpoints, [], doomed)
        return doomed

    def discard_partial_writes(self) -> list[Path]:
        """:meth:`recover`: kept for callers from before checkpoint sets."""
        return self.recover()


class _DeferredCommit:
    """:meth:`CheckpointWriter.deferred_commit`'s block. A class, not a ``contextlib`` generator: the
    trainer opens one on every tick, and a generator's context manager costs several times more to
    enter and leave."""

    __slots__ = ("_batch", "_writer")

    def __init__(self, writer: CheckpointWriter) -> None:
        self._writer = writer
        self._batch: list[CheckpointSet] | None = None

    def __enter__(self) -> None:
        writer = self._writer
        if writer._batch is None:  # the outermost block; a nested one leaves the commit to it
            self._batch = writer._batch = []

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        batch = self._batch
        if batch is None:
            return
        writer = self._writer
        if kind is not None:
            writer._end_batch(batch, commit=False)
        elif not batch and not writer._doomed:  # the usual step: nothing to commit, no write to guard
            writer._end_batch(batch, commit=True)
        else:
            with writer.guard():
                writer._end_batch(batch, commit=True)


__all__ = [
    "CheckpointSet",
    "CheckpointWriter",
    "Position",
    "atomic_torch_save",
    "check_weights_only_safe",
    "load_checkpoint",
    "unsafe_values",
]
