"""Where a run's files live: ``<output-dir>/<run-id>/`` and the names of everything inside it.

Every file name a user or a tool may rely on is spelled here and only here::

    <output-dir>/<run-id>/
        config.yaml          resolved config
        metrics.jsonl        one JSON object per flush
        summary.yaml         per-metric min/max/last/best, summaries, final status
        log.txt
        checkpoints/
            {model}_cp={tag}_model.th
            {model}_cp={tag}_optim.th
            {model}_cp={tag}_trainer.th
            {model}_ema={factor}_cp={tag}_model.th
        eval/{tag}/          one ``noether eval`` of checkpoint {tag}: its own metrics.jsonl,
                             summary.yaml and log.txt (a RunPaths of its own)

Tags are ``E{e}_U{u}_S{s}`` (a position), ``latest``, ``last``, ``best_model.{key}`` and
``best_model.{key}.tolerance={t}`` (see :func:`tag_for_metric`).
"""

from __future__ import annotations

import datetime
import math
import re
import secrets
import string
from pathlib import Path
from typing import Literal

import attrs

from noether_core.errors import UsageError

CheckpointPart = Literal["model", "optim", "trainer"]

_PARTS: tuple[CheckpointPart, ...] = ("model", "optim", "trainer")
_RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
_POSITION_TAG = re.compile(r"E(\d+)_U(\d+)_S(\d+)")


def generate_run_id() -> str:
    """A fresh run id, ``YYYY-MM-DD_`` plus 5 characters of ``[a-z0-9]`` (e.g. ``2024-05-01_k3x9q``).

    The suffix comes from the OS entropy source, so seeding ``random``/``torch`` for a deterministic run
    never makes two runs share an id.
    """
    suffix = "".join(secrets.choice(_RUN_ID_ALPHABET) for _ in range(5))
    return f"{datetime.date.today().isoformat()}_{suffix}"


def format_ema_factor(factor: float) -> str:
    """The spelling of an EMA factor in file names and metric prefixes (``0.999`` → ``"0.999"``)."""
    value = float(factor)
    if not math.isfinite(value):
        raise ValueError(f"EMA factor must be a finite number, got {factor!r}")
    return repr(value)


def tag_for_metric(key: str, tolerance: int | None = None) -> str:
    """The checkpoint tag for the best model by metric ``key``.

    ``tag_for_metric("loss/val/total")`` is ``"best_model.loss.val.total"``; with ``tolerance=3`` it is
    ``"best_model.loss.val.total.tolerance=3"``.
    """
    key = key.strip("/")
    if not key:
        raise ValueError("metric key must not be empty")
    tag = "best_model." + key.replace("/", ".")
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 1:
            raise ValueError(f"tolerance must be an int >= 1, got {tolerance!r}")
        tag += f".tolerance={tolerance}"
    return tag


def parse_position_tag(tag: str) -> tuple[int, int, int] | None:
    """``(epoch, update, sample)`` of a position tag such as ``E1_U10_S320``; ``None`` for any other tag
    (``latest``, ``last``, ``best_model.*``)."""
    match = _POSITION_TAG.fullmatch(tag)
    if match is None:
        return None
    epoch, update, sample = (int(g) for g in match.groups())
    return epoch, update, sample


def _check_name(what: str, value: str) -> str:
    # Names become file names; a separator would escape checkpoints/ and "_cp=" would make tags ambiguous.
    if not value or value in {".", ".."} or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"{what} {value!r} cannot be used in a file name")
    if "_cp=" in value:
        raise ValueError(f"{what} {value!r} must not contain '_cp='")
    return value


#: The longest run id: it names a directory (255 bytes at most on most file systems).
MAX_RUN_ID = 200


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run directory inside the output directory, else
    :class:`~noether_core.errors.UsageError` saying why (empty, ``.``/``..``, a path separator, a control
    character, longer than :data:`MAX_RUN_ID`)."""
    problem = None
    if not run_id:
        problem = "it is empty"
    elif run_id in (".", "..") or "/" in run_id or "\\" in run_id:
        problem = "a run id names one directory inside --output-dir: no '/', '\\', '.' or '..'"
    elif not run_id.isprintable():
        problem = "it contains a control character"
    elif len(run_id) > MAX_RUN_ID:
        problem = f"it is {len(run_id)} characters long, more than {MAX_RUN_ID}"
    elif run_id.startswith("-"):
        problem = "it starts with '-', which command lines would read as an option"
    if problem is not None:
        shown = run_id if len(run_id) <= 60 else run_id[:57] + "..."
        raise UsageError(f"--run-id {shown!r} cannot be used: {problem}")
    return run_id


def check_checkpoint_tag(tag: str) -> str:
    """``tag`` if it can be a checkpoint tag (part of a file name), else
    :class:`~noether_core.errors.UsageError`."""
    try:
        _check_name("checkpoint tag", tag)
        if len(tag) > MAX_RUN_ID or not tag.isprintable():
            raise ValueError(tag)
    except ValueError:
        shown = tag if len(tag) <= 60 else tag[:57] + "..."
        raise UsageError(
            f"--checkpoint {shown!r} is not a checkpoint tag: a tag is a name such as latest, last, "
            f"E1_U10_S320 or best_model.<metric>, at most {MAX_RUN_ID} printable characters, without "
            "'/' or '_cp='"
        ) from None
    return tag


def checkpoint_file_name(model_name: str, tag: str, part: CheckpointPart, ema: float | None = None) -> str:
    """The bare file name of a checkpoint part; see :meth:`RunPaths.checkpoint_file`."""
    _check_name("model name", model_name)
    _check_name("checkpoint tag", tag)
    if part not in _PARTS:
        raise ValueError(f"checkpoint part must be one of {', '.join(_PARTS)}; got {part!r}")
    if ema is None:
        return f"{model_name}_cp={tag}_{part}.th"
    if part != "model":
        raise ValueError(f"EMA checkpoints hold model weights only; got part {part!r}")
    return f"{model_name}_ema={format_ema_factor(ema)}_cp={tag}_model.th"


def _tag_sort_key(tag: str) -> tuple[int, int, int, int, str]:
    position = parse_position_tag(tag)
    if position is None:
        return (1, 0, 0, 0, tag)
    epoch, update, sample = position
    return (0, update, sample, epoch, tag)


def sort_tags(tags: set[str] | list[str]) -> list[str]:
    """Position tags oldest first (by update, not by string), then every other tag alphabetically."""
    return sorted(set(tags), key=_tag_sort_key)


def find_checkpoint_tags(
    checkpoints_dir: Path | str, model_name: str, *, ema: float | None = None
) -> list[str]:
    """Tags with at least one file of ``model_name`` in ``checkpoints_dir``, ordered as :func:`sort_tags`.

    Without ``ema`` the plain parts (model, optim, trainer) count; with ``ema`` only that factor's EMA
    weights. A missing directory has no tags.
    """
    directory = Path(checkpoints_dir)
    _check_name("model name", model_name)
    if not directory.is_dir():
        return []
    if ema is None:
        prefix, suffixes = f"{model_name}_cp=", tuple(f"_{part}.th" for part in _PARTS)
    else:
        prefix, suffixes = f"{model_name}_ema={format_ema_factor(ema)}_cp=", ("_model.th",)
    tags: set[str] = set()
    for entry in directory.iterdir():
        name = entry.name
        if not name.startswith(prefix) or not entry.is_file():
            continue
        for suffix in suffixes:
            if name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
                tags.add(name[len(prefix) : -len(suffix)])
                break
    return sort_tags(tags)


@attrs.frozen
class RunPaths:
    """The directory of one run and the paths of its files. Only :attr:`checkpoints` creates anything
    on access; the files themselves are written by their owners (writers, trackers, the trainer)."""

    root: Path = attrs.field(converter=Path)
    run_id: str

    @classmethod
    def create(cls, output_dir: Path | str, run_id: str | None = None) -> RunPaths:
        """Make ``output_dir/run_id`` (parents included; an existing directory is reused) and return its
        paths. Without ``run_id`` a fresh one from :func:`generate_run_id` is used."""
        run_id = generate_run_id() if run_id is None else _check_name("run id", run_id)
        root = Path(output_dir) / run_id
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, run_id)

    @classmethod
    def existing(cls, run_dir: Path | str) -> RunPaths:
        """The paths of a run directory that must already exist (``noether eval RUN_DIR``, resume).

        Raises :class:`~noether_core.errors.UsageError` when ``run_dir`` is not a directory.
        """
        root = Path(run_dir)
        if not root.is_dir():
            raise UsageError(f"run directory {str(root)!r} does not exist or is not a directory")
        return cls(root, root.resolve().name)

    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary_yaml(self) -> Path:
        return self.root / "summary.yaml"

    @property
    def log_txt(self) -> Path:
        return self.root / "log.txt"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``, created if missing."""
        path = self.root / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint_file(
        self, model_name: str, tag: str, part: CheckpointPart, ema: float | None = None
    ) -> Path:
        """``checkpoints/{model}_cp={tag}_{part}.th``, or with ``ema``
        ``checkpoints/{model}_ema={factor}_cp={tag}_model.th`` (EMA files hold model weights only).

        Raises ``ValueError`` for a name or tag that cannot be part of a file name.
        """
        return self.checkpoints / checkpoint_file_name(model_name, tag, part, ema)

    def checkpoint_tags(self, model_name: str, *, ema: float | None = None) -> list[str]:
        """:func:`find_checkpoint_tags` for this run."""
        return find_checkpoint_tags(self.checkpoints, model_name, ema=ema)

    def all_checkpoint_tags(self) -> list[str]:
        """Tags with a file of any model, part or EMA factor in ``checkpoints/``, ordered as
        :func:`sort_tags`."""
        directory = self.root / "checkpoints"
        if not directory.is_dir():
            return []
        tags = set()
        for entry in directory.iterdir():
            _, found, rest = entry.name.partition("_cp=")
            part = next((p for p in _PARTS if rest.endswith(f"_{p}.th")), None)
            if found and part is not None and entry.is_file() and len(rest) > len(part) + 4:
                tags.add(rest[: -len(part) - 4])
        return sort_tags(tags)


__all__ = [
    "MAX_RUN_ID",
    "CheckpointPart",
    "RunPaths",
    "check_checkpoint_tag",
    "check_run_id",
    "checkpoint_file_name",
    "find_checkpoint_tags",
    "format_ema_factor",
    "generate_run_id",
    "parse_position_tag",
    "sort_tags",
    "tag_for_metric",
]
