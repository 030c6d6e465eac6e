"""From a command line to a finished run: config, plan, run directory, logging, trackers, trainer.

``noether train`` and ``noether eval`` come here. Both make one :class:`~noether_core.run.plan.RunPlan`
of the config and hand it to the :class:`~noether_core.run.trainer.Trainer`; everything the run needs
from the config is derived in the plan, once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from noether_core.config.loader import load_config, unstructure_config
from noether_core.config.schema import RunConfig
from noether_core.errors import EXIT_INTERRUPTED, EXIT_OK, NoetherError, TrainingError, UsageError
from noether_core.example import example_yaml
from noether_core.io.checkpoints import CheckpointWriter, load_checkpoint
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths, generate_run_id
from noether_core.io.trackers import DiskTracker, Tracker, load_trackers, truncate_metrics
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.device import pick_device
from noether_core.run.distributed import init_from_env, shutdown
from noether_core.run.metric_dependencies import check_metric_dependencies, metric_properties
from noether_core.run.plan import RunPlan
from noether_core.run.trainer import Trainer

log = logging.getLogger("noether")


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


def load_run_config(
    config_path: Path | None,
    overrides: Sequence[str],
    registry: PluginRegistry,
    resume: RunPaths | None = None,
) -> RunConfig:
    """The config of a command: the file given, else the resumed run's ``config.yaml``, else the
    bundled example; with ``overrides`` (``--set``) applied."""
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

    box: list[Any] = [generate_run_id() if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _start_trackers(
    paths: RunPaths, plain_config: Mapping[str, Any], metrics: MetricProperties, extra: Sequence[Tracker]
) -> list[Tracker]:
    """The on-disk tracker and the configured ones, started on this run's directory."""
    trackers: list[Tracker] = [DiskTracker(metrics), *extra]
    for tracker in trackers:
        tracker.start(paths, plain_config)
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
    config = load_run_config(config_path, overrides, registry, resume_paths)
    plan = RunPlan(config, registry, source=str(config_path) if config_path is not None else None)
    check_metric_dependencies(plan)
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
    metrics = metric_properties(plan)
    # the trainer checks the checkpoint before this run's files are touched: a refused resume changes
    # nothing on disk
    trainer = Trainer(plan, paths, metrics=metrics, resume_tag=resume_tag)
    if info.is_main:
        CheckpointWriter(paths).discard_partial_writes()
        if resume_tag is not None:
            _forget_metrics_after(paths, config.model.name, resume_tag)
        plain = unstructure_config(config, registry)
        paths.config_yaml.write_text(yaml.safe_dump(plain, sort_keys=False))
        trainer.attach_trackers(_start_trackers(paths, plain, metrics, extra_trackers))
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
    config = load_run_config(None, (), registry, paths)
    plan = RunPlan(config, registry, defaults=False)
    setup_logging(paths)
    metrics = metric_properties(plan)
    plain = unstructure_config(config, registry)
    trackers = _start_trackers(paths, plain, metrics, load_trackers(config.tracker))
    trainer = Trainer(plan, paths, trackers=trackers, metrics=metrics)
    trainer.load_weights(paths, checkpoint)
    if not trainer.plugins.scheduled:
        log.warning("the run's config has no entry with at_eval (an evaluator): nothing to evaluate")
    trainer.evaluate(status=_previous_status(paths))
    log.info("evaluated %s (checkpoint %s at %s)", paths.root, checkpoint, trainer.counter.tag)
    return EXIT_OK


__all__ = ["eval_from_cli", "load_run_config", "setup_logging", "train_from_cli"]
