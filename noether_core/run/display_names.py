"""Names for entries the config leaves unnamed, so that two entries of one kind can be told apart.

An entry's name (``name``, else ``id``, else its ``kind``) is how the timing table, ``summary.yaml``'s
``durations``, ``noether schedule``, error messages and the saved state refer to it. Two unnamed
entries of one kind would share their kind as a name; each of them gets a name that tells it apart
instead, from the option that differs between them:

* an option whose values are text (``dataset_key``): ``OfflineLossCallback[val]``,
  ``OfflineLossCallback[test]``;
* else the interval: ``PeakMemoryCallback[U10]``, ``PeakMemoryCallback[E1]``;
* else another option: ``GradNormCallback[per_module=True]``;

the one of these with the most different values (the first on a tie). Entries that still share a name
are numbered in list order: ``OfflineLossCallback#1``, ``OfflineLossCallback#2``. An entry alone of its
kind, and an entry with a ``name`` or ``id``, keeps its name. The names depend on the config alone, so
``config validate``, ``schedule``, ``train`` and ``eval`` agree on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from noether_core.config.schema import CallbackConfig

#: Fields every entry has; they never tell two entries of one kind apart in a name.
_BASE_FIELDS = frozenset(f.name for f in attrs.fields(CallbackConfig))
#: Longer values make names no one wants to read in a table.
_LONGEST_VALUE = 40

_Label = Callable[[CallbackConfig], str | None]


def _option(field: str, *, bare: bool) -> _Label:
    def label(entry: CallbackConfig) -> str | None:
        value = getattr(entry, field, None)
        if isinstance(value, (str, int, float, bool)) and len(str(value)) <= _LONGEST_VALUE:
            return str(value) if bare else f"{field}={value}"
        return None

    return label


def _interval(entry: CallbackConfig) -> str | None:
    interval = entry.interval
    return interval.short if interval is not None else None


def _candidates(entry: CallbackConfig) -> list[_Label]:
    """The options that may tell ``entry`` apart from others of its kind, most readable first."""
    fields = [f for f in attrs.fields(type(entry)) if f.name not in _BASE_FIELDS]
    text = [_option(f.name, bare=True) for f in fields if isinstance(getattr(entry, f.name), str)]
    other = [_option(f.name, bare=False) for f in fields if not isinstance(getattr(entry, f.name), str)]
    return [*text, _interval, *other]


def _labels(kind: str, group: list[CallbackConfig]) -> list[str]:
    best: list[str] | None = None
    distinct = 1
    for label in _candidates(group[0]):
        values = [label(entry) for entry in group]
        if None in values:
            continue
        count = len(set(values))
        if count > distinct:
            best, distinct = [f"{kind}[{v}]" for v in values if v is not None], count
    return best or [kind] * len(group)


def display_names(entries: Iterable[tuple[str, CallbackConfig]]) -> dict[str, str]:
    """``{path: name}`` for the unnamed ``entries`` (with their paths, nested ones included) that share
    their kind with another unnamed entry; see the module documentation."""
    listed = list(entries)
    taken = {entry.key for _, entry in listed if entry.name is not None or entry.id is not None}
    groups: dict[str, list[tuple[str, CallbackConfig]]] = {}
    for path, entry in listed:
        if entry.name is None and entry.id is None:
            groups.setdefault(entry.kind, []).append((path, entry))
    names: dict[str, str] = {}
    for kind, members in groups.items():
        if len(members) < 2:
            continue
        labels = _labels(kind, [entry for _, entry in members])
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        seen: dict[str, int] = {}
        for (path, _), label in zip(members, labels, strict=True):
            name = label
            if counts[label] > 1 or label in taken:
                seen[label] = seen.get(label, 0) + 1
                name = f"{label}#{seen[label]}"
                while name in taken:
                    seen[label] += 1
                    name = f"{label}#{seen[label]}"
            taken.add(name)
            names[path] = name
    return names


__all__ = ["display_names"]
