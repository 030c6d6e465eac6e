"""The ``metrics.jsonl`` format, read and written without torch (``noether runs list`` and ``noether
plot`` start at once, also where torch is not installed).

One JSON object per line: ``epoch``, ``update`` and ``sample`` (:data:`POSITION_KEYS`), then the metric
keys of one flush. Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``, so every line is strict JSON; the readers here turn them back into floats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The record fields that say where a run was, as opposed to metrics.
POSITION_KEYS = ("epoch", "update", "sample")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_value(value: object) -> object:
    """``value`` as it is written to ``metrics.jsonl``: a non-finite float as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def decode_value(value: object) -> object:
    """The inverse of :func:`encode_value`."""
    return _NON_FINITE[value] if isinstance(value, str) and value in _NON_FINITE else value


def parse_record(line: str) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` (without its newline) as a record; ``ValueError`` saying why it is
    not one."""
    try:
        raw = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as error:
        reason = error if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise ValueError(f"not a JSON object ({reason})") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return {key: decode_value(value) for key, value in raw.items()}


def iter_metrics(path: Path | str, bad_lines: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` one at a time, as :func:`read_metrics` returns them, without
    holding them all. With ``bad_lines``, a line that is not a record is described there
    (``"FILE:LINE: why"``) and skipped instead of raising."""
    with Path(path).open(encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            terminated = line.endswith("\n")
            text = line[:-1] if terminated else line
            if not text.strip():
                continue
            try:
                yield parse_record(text)
            except ValueError as error:
                if not terminated:  # only the unterminated tail can be a fragment of a crash mid-write
                    return
                if bad_lines is None:
                    raise ValueError(f"{path}:{number}: {error}") from None
                bad_lines.append(f"{path}:{number}: {error}")


def read_metrics(path: Path | str, bad_lines: list[str] | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, with ``"NaN"``/``"Infinity"``/``"-Infinity"`` turned back into
    floats. A last line without its newline that does not parse (a crash mid-write) is skipped; any other
    bad line raises ``ValueError``, or with ``bad_lines`` is described there and skipped."""
    return list(iter_metrics(path, bad_lines))


__all__ = ["POSITION_KEYS", "decode_value", "encode_value", "iter_metrics", "parse_record", "read_metrics"]
