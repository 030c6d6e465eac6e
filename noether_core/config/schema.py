"""The attrs classes a run config is structured into. One class per section; plugin configs extend
:class:`CallbackConfig` beside their plugin."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import attrs
from attrs import validators as v

from noether_core.config.durations import Duration, parse_duration
from noether_core.io.metric_properties import Ordinality
from noether_core.lookup import did_you_mean
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


def _group_name(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _MODEL_NAME.fullmatch(value) or len(value) > MAX_MODEL_NAME:
        raise ValueError(
            f"must be 1 to {MAX_MODEL_NAME} letters, digits, '_', '-' and '.' (it is part of metric keys), "
            f"got {value!r}"
        )


def _model_name(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _MODEL_NAME.fullmatch(value) or value in (".", "..") or len(value) > MAX_MODEL_NAME:
        raise ValueError(
            f"must be 1 to {MAX_MODEL_NAME} letters, digits, '_', '-' and '.', and not '.' or '..' "
            f"(it starts the checkpoint files' names), got {value!r}"
        )


#: The kinds the trainer can add as default entries (``trainer.add_default_callbacks``), in the order it
#: adds them.
DEFAULT_KINDS = (
    "DatasetStatsCallback",
    "ParamCountCallback",
    "OnlineLossCallback",
    "LrCallback",
    "TrainTimeCallback",
    "PeakMemoryCallback",
    "ProgressCallback",
    "EtaCallback",
)


def _default_kinds(_: Any, attribute: attrs.Attribute[Any], value: bool | list[str]) -> None:
    if isinstance(value, bool):
        return
    for i, kind in enumerate(value):
        if kind not in DEFAULT_KINDS:
            hint = did_you_mean(kind, DEFAULT_KINDS) if isinstance(kind, str) else ""
            raise ValueError(
                f"{kind!r} (item {i}) is not a default kind; {hint + ' ' if hint else ''}"
                f"the default kinds are {', '.join(DEFAULT_KINDS)}"
            )
    duplicates = sorted({k for k in value if value.count(k) > 1})
    if duplicates:
        raise ValueError(f"lists {', '.join(map(repr, duplicates))} more than once")


def _duration(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        parse_duration(value)


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
    ``id``, else its ``kind`` (unnamed entries of one kind get names that tell them apart,
    ``OfflineLossCallback[val]``, ``OfflineLossCallback#2``)."""
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
    add_default_callbacks: bool | list[str] = attrs.field(default=True, validator=_default_kinds)
    max_time: Duration | None = attrs.field(default=None, validator=_duration)
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
    def max_seconds(self) -> float | None:
        """``max_time`` in seconds, ``None`` without a time limit."""
        return None if self.max_time is None else parse_duration(self.max_time)

    def keeps_default(self, kind: str) -> bool:
        """Whether ``add_default_callbacks`` lets the trainer add the default entries of ``kind``."""
        value = self.add_default_callbacks
        return value if isinstance(value, bool) else kind in value

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


#: The built-in schedule kinds; any other ``lr_schedule.kind`` names a ``torch.optim.lr_scheduler`` class.
BUILTIN_SCHEDULES = ("constant", "cosine", "linear")


@attrs.frozen(kw_only=True)
class ScheduleConfig:
    """A value schedule over the run's updates. The built-in kinds (``constant``, ``cosine``,
    ``linear``): linear warmup from 0, then ``kind`` decay to ``end_factor`` times the base value. Any
    other kind (``lr_schedule`` only) is a ``torch.optim.lr_scheduler`` scheduler, built with ``kwargs``
    and stepped every ``interval``."""

    kind: str = attrs.field(default="cosine", validator=v.min_len(1))
    """``constant``, ``cosine`` or ``linear``; for ``lr_schedule`` also a ``torch.optim.lr_scheduler``
    class by name (``onecyclelr``, any case) or import path (``torch.optim.lr_scheduler.StepLR``,
    ``package.module.Scheduler``)."""
    warmup_updates: int = attrs.field(default=0, validator=v.ge(0))
    """Built-in kinds: linear warmup over this many updates."""
    warmup_fraction: float | None = attrs.field(
        default=None, validator=v.optional([_finite, v.ge(0.0), v.lt(1.0)])
    )
    """Built-in kinds: the warmup as a fraction of the run's updates; replaces ``warmup_updates``."""
    end_factor: float = attrs.field(default=0.0, validator=[_finite, v.ge(0.0)])
    """Built-in kinds: the factor at the last update."""
    kwargs: dict[str, Any] = attrs.Factory(dict)
    """A torch scheduler's keyword arguments (the optimizer is passed by noether)."""
    interval: Literal["update", "epoch"] = "update"
    """A torch scheduler's ``step()``: after every update, or after every epoch."""

    @property
    def builtin(self) -> bool:
        """Whether ``kind`` is one of the built-in factor schedules."""
        return self.kind in BUILTIN_SCHEDULES


@attrs.frozen(kw_only=True)
class ParamGroupConfig:
    """Parameters picked by name pattern into a parameter group of their own."""

    params: list[str] = attrs.field(validator=v.min_len(1))
    """``fnmatch`` patterns of parameter names (``*.bias``, ``encoder.*``), one or a list; a
    parameter goes to the first group with a matching pattern."""
    name: str | None = attrs.field(default=None, validator=v.optional(_group_name))
    """The group's name in metric keys (``optim/lr/{model}/{name}``); unset: its index in the list."""
    lr_scale: float = attrs.field(default=1.0, validator=[_finite, v.ge(0.0)])
    """The group's learning rate is ``lr_scale`` times ``optimizer.lr`` (schedules multiply it)."""
    weight_decay: float | None = attrs.field(default=None, validator=v.optional([_finite, v.ge(0.0)]))
    """The group's weight decay; unset: ``optimizer.weight_decay``."""
    kwargs: dict[str, Any] = attrs.Factory(dict)
    """Other per-group options of the optimizer (``momentum``, ``betas``, ``eps``...)."""


#: What ``optimizer.no_weight_decay_on`` may name.
NoWeightDecayOn = Literal["bias", "norm", "1d"]


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    """The optimizer: any ``torch.optim`` optimizer, its parameter groups, its schedules."""

    kind: str = attrs.field(default="adamw", validator=v.min_len(1))
    """A ``torch.optim`` optimizer by name in any case (``adamw``, ``sgd``, ``radam``), or an import path
    to a ``torch.optim.Optimizer`` subclass (``torch.optim.Adagrad``, ``package.module.Lion`` or
    ``package.module:Lion``)."""
    lr: float = attrs.field(default=1e-3, validator=[_finite, v.gt(0.0)])
    """The base learning rate the schedule multiplies."""
    weight_decay: float = attrs.field(default=0.0, validator=[_finite, v.ge(0.0)])
    """The base weight decay the schedule multiplies (for optimizers that take ``weight_decay``)."""
    betas: tuple[float, float] | None = attrs.field(default=None, validator=v.optional(_finite))
    """For optimizers that take ``betas``; unset: the optimizer's default."""
    momentum: float | None = attrs.field(default=None, validator=v.optional([_finite, v.ge(0.0)]))
    """For optimizers that take ``momentum``; unset: the optimizer's default."""
    kwargs: dict[str, Any] = attrs.Factory(dict)
    """The optimizer's other keyword arguments (``eps``, ``amsgrad``, ``foreach``...)."""
    param_groups: list[ParamGroupConfig] = attrs.Factory(list)
    """Parameter groups by name pattern, before the default group of every model part."""
    no_weight_decay_on: list[NoWeightDecayOn] = attrs.Factory(list)
    """No weight decay on ``bias`` (parameters named ``bias``), ``norm`` (parameters of ``torch.nn``
    normalization layers) and ``1d`` (parameters with fewer than two dimensions), in every group."""
    lr_schedule: ScheduleConfig | None = None
    """The learning-rate schedule: a built-in kind, or a ``torch.optim.lr_scheduler`` scheduler."""
    wd_schedule: ScheduleConfig | None = None
    """The weight-decay schedule (a built-in kind)."""


def _needs_workers(inst: DatasetConfig, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value is not False and inst.num_workers == 0:
        raise ValueError(
            f"{attribute.name} applies to loader worker processes, and num_workers is 0 (the data is "
            "read in the training process); set num_workers > 0 or remove it"
        )


@attrs.frozen(kw_only=True)
class DatasetConfig:
    """A named dataset: a bundled kind or an import path to a factory returning a ``Dataset``, and how
    its loaders read it (the training loader and every evaluation loader over it)."""

    kind: str = attrs.field(validator=v.min_len(1))
    kwargs: dict[str, Any] = attrs.Factory(dict)
    num_workers: int = attrs.field(default=0, validator=v.ge(0))
    """``DataLoader`` worker processes; 0 reads in the training process."""
    persistent_workers: bool | None = attrs.field(default=None, validator=_needs_workers)
    """Keep the workers between epochs. Unset: evaluation loaders keep theirs, the training loader starts
    new ones each epoch (so worker randomness on resume matches an uninterrupted run)."""
    prefetch_factor: int | None = attrs.field(default=None, validator=[_pos_int, _needs_workers])
    """Batches each worker reads ahead. Unset: torch's default (2)."""
    pin_memory: bool | None = None
    """Read batches into page-locked memory so copies to a CUDA device run asynchronously. Unset: on when
    the run's device is CUDA; on other devices nothing is pinned."""
    batched_fetch: bool = True
    """Read a whole batch per call where the dataset can (``blobs``, ``TensorDataset``); ``false`` reads
    sample by sample and collates, as before. Either way the batches are the same."""


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
    "BUILTIN_SCHEDULES",
    "DEFAULT_KINDS",
    "CallbackConfig",
    "DatasetConfig",
    "ModelConfig",
    "NoWeightDecayOn",
    "OptimizerConfig",
    "ParamGroupConfig",
    "Precision",
    "RunConfig",
    "ScheduleConfig",
    "TrackerConfig",
    "TrainerConfig",
    "child_entries",
    "nested_entries",
]
