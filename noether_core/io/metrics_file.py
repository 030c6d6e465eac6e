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


def iter_metrics(path: Path | str) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` one at a time, as :func:`read_metrics` returns them, without
    holding them all."""
    with Path(path).open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            terminated = line.endswith("\n")
            text = line[:-1] if terminated else line
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as error:
                if not terminated:  # only the unterminated tail can be a fragment of a crash mid-write
                    return
                raise ValueError(f"{path}:{number}: not a JSON object ({error})") from error
            if not isinstance(raw, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            yield {key: decode_value(value) for key, value in raw.items()}


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, with ``"NaN"``/``"Infinity"``/``"-Infinity"`` turned back into
    floats. A last line without its newline that does not parse (a crash mid-write) is skipped; any other
    bad line raises ``ValueError``."""
    return list(iter_metrics(path))


__all__ = ["POSITION_KEYS", "decode_value", "encode_value", "iter_metrics", "read_metrics"]
