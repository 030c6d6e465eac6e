"""Wall-clock durations as configs write them: ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``.

The form of a scheduler's time limit (SLURM's ``--time=02:30:00``) and of Lightning's ``max_time``
(``"DD:HH:MM:SS"``). Hours may exceed 23 (``"72:00:00"``) and the seconds may have a fraction
(``"00:00:01.5"``); minutes and seconds are below 60. A config writes the value in quotes: YAML 1.1
reads an unquoted ``2:30:00`` as the number 9000.
"""

from __future__ import annotations

import re
from typing import NewType

Duration = NewType("Duration", str)
"""The type of a config field holding a duration (``trainer.max_time``, ``TimerCallback.duration``): a
string, ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``. The config loader reads it strictly and, for a number,
says that YAML read an unquoted ``2:30:00`` as one."""

_DURATION = re.compile(r"(?:(\d+):)?(\d+):([0-5]?\d):([0-5]?\d(?:\.\d+)?)")


def parse_duration(text: str) -> float:
    """The seconds ``text`` (``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``) stands for; ``ValueError`` naming the
    expected forms for anything else, and for a duration of zero."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'expected "HH:MM:SS" or "DD:HH:MM:SS" (e.g. "02:30:00"), got {text!r}')
    days, hours, minutes, seconds = match.groups()
    total = ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(seconds)
    if total <= 0:
        raise ValueError(f"expected a duration longer than zero, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS`` (hours unbounded, whole seconds), for messages."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def as_yaml_read_it(value: float) -> str:
    """The unquoted ``H:MM:SS`` YAML 1.1 reads as the number ``value`` (base 60: ``9000`` was
    ``2:30:00``, ``1.5`` was ``0:00:01.5``), for messages."""
    whole = int(value)
    fraction = f"{value - whole:.6g}".lstrip("0") if isinstance(value, float) and value != whole else ""
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}{fraction}"


__all__ = ["Duration", "as_yaml_read_it", "format_duration", "parse_duration"]
