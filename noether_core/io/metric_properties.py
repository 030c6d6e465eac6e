"""Which way is better for a metric key: higher, lower, or neither (neutral).

Consumers that compare values of a metric (best checkpoint, best metric, early stopping, the summary's
``best``) ask the run's :class:`MetricProperties` (``trainer.metrics``). Directions come from ordered
``fnmatch`` patterns matched against the lower-cased key, first match wins; patterns a user or plugin
registers are tried before the built-in defaults, so they can override them::

    metrics.register("val/psnr*", "higher")
    metrics.register("loss_weight/*", "lower")   # overrides the neutral default for this namespace
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Literal, get_args

from noether_core.errors import UnknownMetricDirectionError

Ordinality = Literal["higher", "lower", "neutral"]

_ORDINALITIES: tuple[str, ...] = get_args(Ordinality)

DEFAULT_PATTERNS: tuple[tuple[str, Ordinality], ...] = (
    *(
        (pattern, "neutral")
        for pattern in (
            "profiler/*",
            "optim/*",
            "profiling/*",
            "ctx/*",
            "loss_weight/*",
            "gradient/*",
            "detach/*",
            "lossdiff/*",
            "train_time/*",
            "peak_memory/*",
            "param_count/*",
            "ds_stats/*",
        )
    ),
    ("*accuracy*", "higher"),
    ("*auc*", "higher"),
    ("*f1*", "higher"),
    ("*loss*", "lower"),
    ("*error*", "lower"),
)
"""The built-in patterns, in match order: namespaces that are never "better" first, so that
``loss_weight/decay`` is neutral although it contains ``loss``."""


def _check_ordinality(ordinality: str) -> Ordinality:
    if ordinality not in _ORDINALITIES:
        raise ValueError(f"ordinality must be one of {', '.join(_ORDINALITIES)}; got {ordinality!r}")
    return ordinality  # type: ignore[return-value]


class MetricProperties:
    """The metric directions of one run. Instances share nothing.

    ``patterns`` (pairs or a mapping, in order) are the user's; :meth:`register` appends to them. User
    patterns are tried in registration order, then :data:`DEFAULT_PATTERNS` (unless ``defaults=False``).
    Register specific patterns before general ones.
    """

    def __init__(
        self,
        patterns: Iterable[tuple[str, Ordinality]] | Mapping[str, Ordinality] = (),
        *,
        defaults: bool = True,
    ) -> None:
        self._user: list[tuple[str, Ordinality]] = []
        self._defaults: tuple[tuple[str, Ordinality], ...] = DEFAULT_PATTERNS if defaults else ()
        self._cache: dict[str, tuple[str, Ordinality] | None] = {}
        pairs = patterns.items() if isinstance(patterns, Mapping) else patterns
        for pattern, ordinality in pairs:
            self.register(pattern, ordinality)

    def register(self, pattern: str, ordinality: Ordinality) -> None:
        """Add a pattern, tried after the user patterns already registered and before the defaults.

        ``pattern`` is an ``fnmatch`` glob (``*`` also matches ``/``), compared case-insensitively.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty string, got {pattern!r}")
        self._user.append((pattern.lower(), _check_ordinality(ordinality)))
        self._cache.clear()

    @property
    def patterns(self) -> tuple[tuple[str, Ordinality], ...]:
        """Every pattern in match order: user patterns, then defaults."""
        return (*self._user, *self._defaults)

    def match(self, key: str) -> tuple[str, Ordinality] | None:
        """The first ``(pattern, ordinality)`` that matches ``key``, or ``None``."""
        lowered = key.lower()
        if lowered not in self._cache:
            self._cache[lowered] = next(
                (pair for pair in self.patterns if fnmatch.fnmatchcase(lowered, pair[0])), None
            )
        return self._cache[lowered]

    def ordinality(self, key: str) -> Ordinality | None:
        """``"higher"``, ``"lower"`` or ``"neutral"`` for ``key``; ``None`` when no pattern matches."""
        found = self.match(key)
        return None if found is None else found[1]

    def is_neutral(self, key: str) -> bool:
        """Whether ``key`` is a metric with no better direction (a learning rate, a timing)."""
        return self.ordinality(key) == "neutral"

    def higher_is_better(self, key: str) -> bool:
        """``True`` for higher-is-better metrics, ``False`` for lower-is-better ones.

        Raises :class:`~noether_core.errors.UnknownMetricDirectionError` when no pattern matches ``key``
        or the match is neutral: guessing would silently keep the worst model.
        """
        found = self.match(key)
        if found is None:
            raise UnknownMetricDirectionError(key, "no pattern matches it")
        pattern, ordinality = found
        if ordinality == "neutral":
            raise UnknownMetricDirectionError(key, f"it matches the neutral pattern {pattern!r}")
        return ordinality == "higher"

    def __repr__(self) -> str:
        return f"MetricProperties(user={self._user!r}, defaults={bool(self._defaults)})"


__all__ = ["DEFAULT_PATTERNS", "MetricProperties", "Ordinality"]
