"""Finding things by name: import paths, entry points, call signatures, and the "did you mean" of every
message that names something the user may have mistyped.

Every part of noether that turns a string of a config into an object goes through here: plugin kinds
(:mod:`noether_core.plugins.registry`), model, dataset and train-step factories
(:mod:`noether_core.run.building`) and trackers (:mod:`noether_core.io.trackers`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

import attrs

from noether_core.errors import ImportPathError


def close_matches(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The ``n`` choices closest to ``word``, best first (``difflib``'s ratio of at least ``cutoff``)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def did_you_mean(
    word: str,
    choices: Iterable[str],
    *,
    n: int = 1,
    cutoff: float = 0.6,
    capital: bool = False,
    show: Callable[[str], str] = repr,
) -> str:
    """``"did you mean 'x'?"`` (or ``'x' or 'y'``) for the choices close to ``word``, ``""`` for none.

    ``capital`` starts it with a capital letter, for a message that puts it in a sentence of its own.
    """
    close = close_matches(word, choices, n=n, cutoff=cutoff)
    if not close:
        return ""
    return f"{'D' if capital else 'd'}id you mean {' or '.join(show(c) for c in close)}?"


def import_object(path: str) -> Any:
    """The object an import path names: ``package.module:attr`` (``attr`` may be dotted), or the module
    itself for ``package.module`` and ``package.module:``.

    An attribute a module does not have may be a submodule that is not imported yet: it is imported
    (``pkg:hooks`` for the module ``pkg.hooks``). Raises :class:`ImportPathError` when the path is wrong;
    any exception raised by the imported module's own code propagates unchanged.
    """
    module_name, _, attribute = path.partition(":")
    module_name = module_name.strip()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ImportPathError(path, f"no module named {missing!r}", module=missing) from None
        raise  # the module exists, but something it imports does not
    for part in filter(None, attribute.strip().split(".")):
        if hasattr(target, part):
            target = getattr(target, part)
            continue
        if isinstance(target, types.ModuleType):
            try:
                target = importlib.import_module(f"{target.__name__}.{part}")
                continue
            except ModuleNotFoundError as exc:
                if exc.name != f"{target.__name__}.{part}":
                    raise
        close = close_matches(part, [n for n in dir(target) if not n.startswith("_")])
        raise ImportPathError(
            path,
            f"{module_name!r} has no attribute {part!r}",
            module=module_name,
            attribute=part,
            suggestion=f"{module_name}:{close[0]}" if close else None,
        )
    return target


def kwargs_problem(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> str | None:
    """Why ``factory(**kwargs)`` cannot be called, judged from its signature alone; ``None`` when it can
    (or when its signature cannot be read, as for some builtins)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        parameters = signature.parameters
        accepted = [
            name
            for name, p in parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [k for k in kwargs if k not in parameters]
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            hint = did_you_mean(unknown[0], accepted) or f"it takes {', '.join(accepted) or 'nothing'}"
            return f"unknown argument {unknown[0]!r}; {hint}"
        return str(exc)
    return None


@attrs.frozen
class PluginSource:
    """Where a kind (a plugin's or a tracker's name) comes from: an entry point of an installed
    distribution, read from its metadata without importing anything, or an import path written in a
    config (``distribution`` ``None``)."""

    kind: str
    value: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> str:
        return f"{self.distribution} {self.version}" if self.distribution else self.value

    def load(self) -> Any:
        """Import what ``value`` names (see :func:`import_object`)."""
        return import_object(self.value)


def entry_point_sources(group: str) -> list[PluginSource]:
    """Every kind registered in the entry-point ``group`` by the installed distributions."""
    out = []
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        out.append(
            PluginSource(
                kind=ep.name,
                value=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
        )
    return out


def claims_by_kind(sources: Iterable[PluginSource]) -> dict[str, list[PluginSource]]:
    """``sources`` grouped by kind; a kind with more than one claim is provided by several
    distributions. A distribution visible twice on ``sys.path`` (an editable install) counts once."""
    out: dict[str, list[PluginSource]] = {}
    for source in sources:
        claims = out.setdefault(source.kind, [])
        if all(c.distribution != source.distribution or c.value != source.value for c in claims):
            claims.append(source)
    return out


__all__ = [
    "PluginSource",
    "claims_by_kind",
    "close_matches",
    "did_you_mean",
    "entry_point_sources",
    "import_object",
    "kwargs_problem",
]
