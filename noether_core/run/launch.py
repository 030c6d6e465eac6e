"""From command line to finished run: config, run directory, logging, trackers, default plugins.

The trainer adds default plugins by kind name (never importing ``noether_plugins``): a kind that is
not installed is skipped. Producers of metrics come first so that consumers in the user's list see
this step's values.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from noether_core.config.loader import load_config, make_converter, unstructure_config
from noether_core.config.schema import CallbackConfig, RunConfig
from noether_core.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    NoetherError,
    PluginLoadError,
    TrainingError,
    UsageError,
)
from noether_core.example import example_yaml
from noether_core.io.checkpoints import CheckpointWriter, load_checkpoint
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import DiskTracker, Tracker, load_trackers, truncate_metrics
from noether_core.plugins.registry import Plugin, PluginRegistry
from noether_core.plugins.scheduling import Interval
from noether_core.run.building import check_buildable, geometry
from noether_core.run.distributed import init_from_env, shutdown
from noether_core.run.metric_dependencies import check_metric_dependencies
from noether_core.run.trainer import Trainer, pick_device

log = logging.getLogger("noether")

#: Kinds the trainer adds, in this order, when ``trainer.add_default_callbacks`` is true.
ALWAYS_DEFAULTS = ("DatasetStatsCallback", "ParamCountCallback")
TRACK_DEFAULTS = ("OnlineLossCallback", "LrCallback")
LOG_DEFAULTS = (
    "OnlineLossCallback",
    "TrainTimeCallback",
    "PeakMemoryCallback",
    "ProgressCallback",
    "EtaCallback",
)


def default_intervals(config: RunConfig, total_updates: int) -> tuple[Interval, Interval]:
    """(log, track) intervals: the configured ones, else about 100 logs and 500 tracks per run."""
    log_interval = config.trainer.log_interval or Interval("update", max(total_updates // 100, 1))
    track_interval = config.trainer.track_interval or Interval("update", max(total_updates // 500, 1))
    return log_interval, track_interval


def default_entries(
    config: RunConfig, registry: PluginRegistry, total_updates: int | None = None
) -> list[CallbackConfig]:
    """The default entries for this run, producers first, skipping kinds that are not installed."""
    if not config.trainer.add_default_callbacks:
        return []
    if total_updates is None:
        total_updates = geometry(config)[2]
    log_interval, track_interval = default_intervals(config, total_updates)
    wanted: list[tuple[str, Interval | None, dict[str, Any]]] = [(k, None, {}) for k in ALWAYS_DEFAULTS]
    if log_interval != track_interval:
        wanted.append(("OnlineLossCallback", track_interval, {"verbose": False}))
        wanted.append(("OnlineLossCallback", log_interval, {"verbose": True}))
    else:
        # two online-loss entries on one interval would log the same keys twice (the reference's B5)
        wanted.append(("OnlineLossCallback", log_interval, {"verbose": True}))
    wanted.append(("LrCallback", track_interval, {}))
    for kind in LOG_DEFAULTS[1:]:
        if kind == "EtaCallback" and not sys.stdout.isatty():
            continue
        wanted.append((kind, log_interval, {}))
    converter = make_converter(registry)
    entries: list[CallbackConfig] = []
    for kind, interval, fields in wanted:
        if not registry.sources(kind):
            continue
        try:
            plugin = registry.load(kind)
        except PluginLoadError as exc:
            log.warning("default plugin %s is not usable and is left out: %s", kind, exc)
            continue
        raw: dict[str, Any] = {"kind": kind, **fields}
        if plugin.scheduled and interval is not None:
            raw[f"every_n_{interval.unit}s"] = interval.every
            if kind == "OnlineLossCallback":
                raw["name"] = f"{kind}/{interval.short}"
        # a default's options (e.g. verbose) apply only where its Config has them
        names = {a.name for a in attrs.fields(plugin.config_class)}
        raw = {k: v for k, v in raw.items() if k in names}
        entries.append(converter.structure(raw, CallbackConfig))
    return entries


def build_entries(
    config: RunConfig, registry: PluginRegistry, total_updates: int, *, defaults: bool = True
) -> list[tuple[Plugin, CallbackConfig, bool]]:
    out = []
    if defaults:
        out += [(registry.load(e.kind), e, True) for e in default_entries(config, registry, total_updates)]
    out += [(registry.load(e.kind), e, False) for e in config.callbacks]
    return out


def setup_logging(paths: RunPaths | None, is_main: bool = True) -> None:
    logger = logging.getLogger("noether")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout if is_main else sys.stderr)
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    file_only = logging.getLogger("noether.file")
    file_only.propagate = False
    for handler in list(file_only.handlers):
        file_only.removeHandler(handler)
    if paths is not None and is_main:
        file_handler = logging.FileHandler(paths.log_txt, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
        file_only.addHandler(file_handler)


def _load_run_config(
    config_path: Path | None, overrides: Sequence[str], registry: PluginRegistry, resume: RunPaths | None
) -> RunConfig:
    if config_path is not None:
        return load_config(config_path, registry, overrides)
    if resume is not None:
        if not resume.config_yaml.exists():
            raise UsageError(f"{str(resume.root)!r} is not a noether run directory (it has no config.yaml)")
        return load_config(resume.config_yaml, registry, overrides)
    return load_config(None, registry, overrides, text=example_yaml())


def _agree_on_run_id(run_id: str | None, device: str) -> str | None:
    """Every rank of a torchrun job must write into one directory: rank 0 picks the id."""
    info = init_from_env(device)
    if not info.is_distributed or run_id is not None:
        return run_id
    import torch.distributed as dist

    from noether_core.io.paths import generate_run_id

    box: list[Any] = [generate_run_id() if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _start_trackers(
    config: RunConfig,
    paths: RunPaths,
    registry: PluginRegistry,
    metrics: MetricProperties,
    extra: Sequence[Tracker],
) -> list[Tracker]:
    """The on-disk tracker and the configured ones, started on this run's directory."""
    trackers: list[Tracker] = [DiskTracker(metrics), *extra]
    plain = unstructure_config(config, registry)
    for tracker in trackers:
        tracker.start(paths, plain)
    return trackers


def _forget_metrics_after(paths: RunPaths, model_name: str, tag: str) -> None:
    """Metrics logged after the checkpoint being resumed would otherwise appear twice."""
    trainer_file = paths.checkpoint_file(model_name, tag, "trainer")
    if not trainer_file.exists():
        return  # the trainer reports the missing checkpoint with the tags that do exist
    update = int(load_checkpoint(trainer_file)["counter"]["update"])
    dropped = truncate_metrics(paths.metrics_jsonl, update)
    if dropped:
        log.info("resume: dropped %d metric records logged after update %d", dropped, update)


def train_from_cli(
    *,
    config_path: Path | None,
    overrides: Sequence[str],
    output_dir: Path,
    run_id: str | None,
    resume: Path | None,
    checkpoint: str | None,
) -> int:
    """``noether train``: returns the exit status (0, or 130 when interrupted)."""
    registry = PluginRegistry.from_environment()
    resume_paths = RunPaths.existing(resume) if resume is not None else None
    if checkpoint is not None and resume_paths is None:
        raise UsageError("--checkpoint only makes sense with --resume RUN_DIR")
    config = _load_run_config(config_path, overrides, registry, resume_paths)
    check_buildable(config, str(config_path) if config_path is not None else None)
    check_metric_dependencies(config, registry, source=str(config_path) if config_path is not None else None)
    _, _, total = geometry(config)
    entries = build_entries(config, registry, total)

    extra_trackers = load_trackers(config.tracker)  # before anything is written: bad kinds are config errors

    device = pick_device(config.trainer.device).type
    if resume_paths is not None:
        paths = resume_paths
    else:
        paths = RunPaths.create(output_dir, _agree_on_run_id(run_id, device))
    info = init_from_env(device)
    if resume_paths is None and paths.config_yaml.exists():
        raise UsageError(
            f"{str(paths.root)!r} already holds a run; continue it with --resume {paths.root}, "
            "or choose another --run-id"
        )
    setup_logging(paths, info.is_main)
    resume_tag = (checkpoint or "latest") if resume_paths is not None else None
    metrics = MetricProperties()
    # the trainer checks the checkpoint before this run's files are touched: a refused resume changes
    # nothing on disk
    trainer = Trainer(
        config, entries, paths, metrics=metrics, resume_tag=resume_tag, plugin_registry=registry
    )
    if info.is_main:
        CheckpointWriter(paths).discard_partial_writes()
        if resume_tag is not None:
            _forget_metrics_after(paths, config.model.name, resume_tag)
        paths.config_yaml.write_text(yaml.safe_dump(unstructure_config(config, registry), sort_keys=False))
        trainer.attach_trackers(_start_trackers(config, paths, registry, metrics, extra_trackers))
    log.info("run directory: %s", paths.root)
    try:
        status = trainer.fit()
    except NoetherError:
        # the console gets one paragraph (the CLI prints it); the traceback goes to log.txt
        logging.getLogger("noether.file").exception("training failed")
        raise
    except Exception as exc:
        logging.getLogger("noether.file").exception("training failed")
        raise TrainingError(
            f"training failed at update {trainer.counter.update}: {type(exc).__name__}: {exc} "
            f"(full traceback in {paths.log_txt})"
        ) from exc
    finally:
        shutdown(trainer.dist)
    log.info("run %s %s at %s; files in %s", paths.run_id, status, trainer.counter.tag, paths.root)
    if status == "interrupted":
        log.info("resume with: noether train --resume %s", paths.root)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _previous_status(paths: RunPaths) -> str:
    try:
        summary = yaml.safe_load(paths.summary_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "completed"
    status = summary.get("status") if isinstance(summary, dict) else None
    return str(status) if status else "completed"


def eval_from_cli(*, run_dir: Path, checkpoint: str) -> int:
    """``noether eval``: ``at_eval(interval="eval")`` on the run's own entries with a checkpoint's weights."""
    registry = PluginRegistry.from_environment()
    paths = RunPaths.existing(run_dir)
    config = _load_run_config(None, (), registry, paths)
    check_buildable(config)
    _, _, total = geometry(config)
    entries = build_entries(config, registry, total, defaults=False)
    setup_logging(paths)
    metrics = MetricProperties()
    trackers = _start_trackers(config, paths, registry, metrics, load_trackers(config.tracker))
    trainer = Trainer(config, entries, paths, trackers=trackers, metrics=metrics, plugin_registry=registry)
    trainer.load_weights(paths, checkpoint)
    if not trainer.plugins.scheduled:
        log.warning("the run's config has no entry with at_eval (an evaluator): nothing to evaluate")
    trainer.evaluate(status=_previous_status(paths))
    log.info("evaluated %s (checkpoint %s at %s)", paths.root, checkpoint, trainer.counter.tag)
    return EXIT_OK


__all__ = ["build_entries", "default_entries", "default_intervals", "eval_from_cli", "train_from_cli"]
