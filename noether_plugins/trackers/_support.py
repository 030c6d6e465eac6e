"""What the built-in trackers share: their library imported on demand, the run config flattened into
parameters, a JSON file of their own in the run directory, and the positions every record carries."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noether_core import ConfigError, ConfigIssue, atomic_write_text

#: The keys every record starts with (``noether_core.io.trackers.POSITION_KEYS``).
POSITION_KEYS = ("epoch", "update", "sample")


def require(module: str, *, tracker: str, extra: str) -> Any:
    """``module``, imported for the tracker ``tracker``. A library that cannot be found is a
    :class:`~noether_core.ConfigError` (exit status 2) with the commands that install it: ``extra`` is
    the extra of this project that brings it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        package = module.split(".")[0]
        raise ConfigError(
            [
                ConfigIssue(
                    "kind",
                    f"the {tracker!r} tracker needs the {package} package, which cannot be imported "
                    f"({error}): pip install {package} (in a checkout of noether: "
                    f"pip install -c constraints.txt -e '.[{extra}]')",
                )
            ]
        ) from error


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as one level, keys joined with ``.`` (``trainer.max_epochs``,
    ``callbacks.0.kind``). Empty mappings and lists stay as values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple) and value:
            out.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}."))
        else:
            out[name] = value
    return out


def read_state(path: Path) -> dict[str, Any]:
    """The JSON object a tracker keeps in ``path`` (its backend's run id), or ``{}`` when there is none
    or it cannot be read (a fresh start is then the only safe choice)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` as JSON, atomically: a process killed meanwhile, or a full disk, leaves
    the old file."""
    atomic_write_text(path, json.dumps(dict(data), indent=2) + "\n")


def check_type(value: object, types: type | tuple[type, ...], field: str, expected: str) -> None:
    """A :class:`~noether_core.ConfigError` at ``kwargs.{field}`` unless ``value`` is one of ``types``."""
    if not isinstance(value, types):
        raise ConfigError([ConfigIssue(f"kwargs.{field}", f"must be {expected}, got {value!r}")])
