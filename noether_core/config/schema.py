"""The attrs classes a run config is structured into. One class per section; plugin configs extend
:class:`CallbackConfig` beside their plugin."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import attrs
from attrs import validators as v

from noether_core.io.metric_properties import Ordinality
from noether_core.plugins.scheduling import Interval
from noether_core.run.counter import RunEnd

_pos_int = v.optional(v.ge(1))
#: Seconds a run may take to end after SIGTERM/SIGINT before the stop watchdog ends the process.
_STOP_TIMEOUT: float | None = 60.0

#: ``trainer.num_threads`` at most: torch takes a C int, and no machine has more cores.
MAX_THREADS = 4096
#: How long a model name may be: it starts every checkpoint file's name (255 bytes at most on most
#: file systems, with the tag and the part after it).
MAX_MODEL_NAME = 100
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _finite(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # NaN passes every comparison validator and infinity most; neither is a usable setting here
    values = value if isinstance(value, tuple) else (value,)
    if any(x is not None and not math.isfinite(x) for x in values):
        raise ValueError(f"'{attribute.name}' must be a finite number: {value!r}")


def _model_name(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _MODEL_NAME.fullmatch(value) or value in (".", "..") or len(value) > MAX_MODEL_NAME:
        raise ValueError(
            f"must be 1 to {MAX_MODEL_NAME} letters, digits, '_', '-' and '.', and not '.' or '..' "
            f"(it starts the checkpoint files' names), got {value!r}"
        )


#: Numeric precision of the forward pass: full, bfloat16 autocast, or float16 autocast with a grad scaler.
Precision = Literal["fp32", "bf16", "fp16"]


def _exactly_one_end(inst: TrainerConfig) -> RunEnd:
    given = [
        (u, n)
        for u, n in (("epoch", inst.max_epochs), ("update", inst.max_updates), ("sample", inst.max_samples))
        if n is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "set exactly one of max_epochs, max_updates, max_samples"
            + (f"; got {', '.join(f'max_{u}s' for u, _ in given)}" if given else "")
        )
    unit, n = given[0]
    return RunEnd(unit, n)  # type: ignore[arg-type]


@attrs.frozen(kw_only=True)
class CallbackConfig:
    """Fields every ``callbacks`` entry has. A class plugin's ``Config`` extends it.

    ``kind`` names the plugin (an entry-point name, a seed spelling such as
    ``noether.core.callbacks.CheckpointCallback``, or an import path ``pkg.module:Name``). ``name`` is the
    instance name: it keys the entry's state in checkpoints and must be unique; ``id`` is accepted as
    its older spelling. Exactly one ``every_n_*`` is set when the plugin implements ``at_eval`` (unless
    its ``Config`` gives a default), none otherwise. ``eval_at_end`` adds one more ``at_eval`` after the
    last update when the interval did not fall on it (a final evaluation).
    """

    kind: str = attrs.field(validator=v.min_len(1))
    """The plugin: an entry-point name (``CheckpointCallback``), a seed spelling
    (``noether.core.callbacks.CheckpointCallback``) or an import path (``package.module:Name``)."""
    name: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    """The entry's name for its saved state, logs and timings; unique among the entries. Unset: its
    ``id``, else its ``kind``."""
    id: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    """The older spelling of ``name``; if both are set they must agree."""
    every_n_epochs: int | None = attrs.field(default=None, validator=_pos_int)
    """Call ``at_eval`` after every this many epochs. Exactly one ``every_n_*`` is set when the plugin
    implements ``at_eval`` (unless its ``Config`` gives a default), none otherwise."""
    every_n_updates: int | None = attrs.field(default=None, validator=_pos_int)
    """Call ``at_eval`` after every this many optimizer updates."""
    every_n_samples: int | None = attrs.field(default=None, validator=_pos_int)
    """Call ``at_eval`` at the first update that crosses each multiple of this many training samples."""
    eval_at_end: bool = False
    """Call ``at_eval`` once more after the last update when the interval did not fall on it."""

    @property
    def interval(self) -> Interval | None:
        """The entry's interval, ``None`` for entries that are not scheduled."""
        return Interval.from_fields(self.every_n_epochs, self.every_n_updates, self.every_n_samples)

    @property
    def key(self) -> str:
        """The entry's name for state, logs and timing: ``name``, else ``id``, else ``kind``."""
        return self.name or self.id or self.kind


def child_entries(config: CallbackConfig) -> Iterator[tuple[str, CallbackConfig]]:
    """The entries nested in an entry (EmaCallback's ``eval_callbacks``): the items of its fields that hold
    lists of entries, each with its path relative to the entry (``eval_callbacks[0]``)."""
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, CallbackConfig):
                    yield f"{field.name}[{i}]", item


def nested_entries(entries: Iterable[tuple[str, CallbackConfig]]) -> Iterator[tuple[str, CallbackConfig]]:
    """Each of ``entries`` (with its path), followed by the entries nested in it, depth first."""
    for path, entry in entries:
        yield path, entry
        yield from nested_entries((f"{path}.{sub}", child) for sub, child in child_entries(entry))


@attrs.frozen(kw_only=True)
class TrainerConfig:
    """How long and how to train. ``batch_size`` is the effective batch size of one update, over all
    ranks and micro-batches; each micro-batch holds ``batch_size / (world_size * accumulation_steps)``."""

    max_epochs: int | None = attrs.field(default=None, validator=_pos_int)
    max_updates: int | None = attrs.field(default=None, validator=_pos_int)
    max_samples: int | None = attrs.field(default=None, validator=_pos_int)
    batch_size: int = attrs.field(default=32, validator=v.ge(1))
    accumulation_steps: int = attrs.field(default=1, validator=v.ge(1))
    precision: Precision = "fp32"
    device: str = "auto"
    seed: int = 0
    clip_grad_norm: float | None = attrs.field(default=None, validator=v.optional([_finite, v.gt(0.0)]))
    clip_grad_value: float | None = attrs.field(default=None, validator=v.optional([_finite, v.gt(0.0)]))
    skip_nan_loss: bool = False
    skip_nan_loss_max_count: int = attrs.field(default=100, validator=v.ge(1))
    train_step: str | None = None
    log_every_n_epochs: int | None = attrs.field(default=None, validator=_pos_int)
    log_every_n_updates: int | None = attrs.field(default=None, validator=_pos_int)
    log_every_n_samples: int | None = attrs.field(default=None, validator=_pos_int)
    track_every_n_epochs: int | None = attrs.field(default=None, validator=_pos_int)
    track_every_n_updates: int | None = attrs.field(default=None, validator=_pos_int)
    track_every_n_samples: int | None = attrs.field(default=None, validator=_pos_int)
    add_default_callbacks: bool = True
    save_last: bool = True
    slow_plugin_share: float = attrs.field(default=0.25, validator=[_finite, v.gt(0.0), v.le(1.0)])
    stop_timeout: float | None = attrs.field(default=_STOP_TIMEOUT, validator=v.optional(v.gt(0.0)))
    deterministic: bool = True
    num_threads: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), v.le(MAX_THREADS)]))
    process_group_timeout: float = attrs.field(default=1800.0, validator=[_finite, v.gt(0.0)])

    def __attrs_post_init__(self) -> None:
        _exactly_one_end(self)
        for prefix in ("log", "track"):
            given = [
                f"{prefix}_every_n_{u}"
                for u in ("epochs", "updates", "samples")
                if getattr(self, f"{prefix}_every_n_{u}") is not None
            ]
            if len(given) > 1:
                raise ValueError(
                    f"set at most one of {prefix}_every_n_epochs/updates/samples; got {', '.join(given)}"
                )
        if self.batch_size % self.accumulation_steps:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by "
                f"accumulation_steps {self.accumulation_steps}"
            )

    @property
    def end(self) -> RunEnd:
        return _exactly_one_end(self)

    @property
    def log_interval(self) -> Interval | None:
        return Interval.from_fields(
            self.log_every_n_epochs, self.log_every_n_updates, self.log_every_n_samples
        )

    @property
    def track_interval(self) -> Interval | None:
        return Interval.from_fields(
            self.track_every_n_epochs, self.track_every_n_updates, self.track_every_n_samples
        )


@attrs.frozen(kw_only=True)
class ModelConfig:
    """The model: a bundled kind (``mlp``) or an import path to any ``nn.Module`` factory
    (``pkg.module:make_model``), called with ``kwargs``. With ``parts``, a composite model whose named
    parts are built from their own configs and saved separately."""

    kind: str = "composite"
    name: str = attrs.field(default="model", validator=_model_name)
    kwargs: dict[str, Any] = attrs.Factory(dict)
    parts: dict[str, ModelConfig] | None = None
    frozen: bool = False


@attrs.frozen(kw_only=True)
class ScheduleConfig:
    """A value schedule over the run's updates: linear warmup from 0, then ``kind`` decay to
    ``end_factor`` times the base value."""

    kind: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_updates: int = attrs.field(default=0, validator=v.ge(0))
    warmup_fraction: float | None = attrs.field(
        default=None, validator=v.optional([_finite, v.ge(0.0), v.lt(1.0)])
    )
    end_factor: float = attrs.field(default=0.0, validator=[_finite, v.ge(0.0)])


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    kind: Literal["adamw", "sgd"] = "adamw"
    lr: float = attrs.field(default=1e-3, validator=[_finite, v.gt(0.0)])
    weight_decay: float = attrs.field(default=0.0, validator=[_finite, v.ge(0.0)])
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_finite)
    momentum: float = attrs.field(default=0.0, validator=[_finite, v.ge(0.0)])
    lr_schedule: ScheduleConfig | None = None
    wd_schedule: ScheduleConfig | None = None


@attrs.frozen(kw_only=True)
class DatasetConfig:
    """A named dataset: a bundled kind or an import path to a factory returning a ``Dataset``."""

    kind: str = attrs.field(validator=v.min_len(1))
    kwargs: dict[str, Any] = attrs.Factory(dict)
    num_workers: int = attrs.field(default=0, validator=v.ge(0))


@attrs.frozen(kw_only=True)
class TrackerConfig:
    """An extra tracker from the ``noether.trackers`` entry-point group (the on-disk one always runs)."""

    kind: str = attrs.field(validator=v.min_len(1))
    kwargs: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class RunConfig:
    """A whole run, as one YAML file describes it."""

    trainer: TrainerConfig
    model: ModelConfig
    optimizer: OptimizerConfig = attrs.Factory(OptimizerConfig)
    datasets: dict[str, DatasetConfig] = attrs.Factory(dict)
    callbacks: list[CallbackConfig] = attrs.Factory(list)
    tracker: list[TrackerConfig] = attrs.Factory(list)
    #: Which way is better for metrics the built-in patterns do not know: ``{PATTERN: higher | lower |
    #: neutral}``, ``fnmatch`` patterns of metric keys, tried before every other pattern.
    metrics: dict[str, Ordinality] = attrs.Factory(dict)

    def entries(self) -> Iterator[tuple[str, CallbackConfig]]:
        """Every ``callbacks`` entry with its path, the nested ones (``eval_callbacks``) included."""
        return nested_entries((f"callbacks[{i}]", e) for i, e in enumerate(self.callbacks))


__all__ = [
    "CallbackConfig",
    "DatasetConfig",
    "ModelConfig",
    "OptimizerConfig",
    "Precision",
    "RunConfig",
    "ScheduleConfig",
    "TrackerConfig",
    "TrainerConfig",
    "child_entries",
    "nested_entries",
]
