"""From a command line to a finished run: config, plan, run directory, logging, trackers, trainer.

``noether train`` and ``noether eval`` come here. Both make one :class:`~noether_core.run.plan.RunPlan`
of the config and hand it to the :class:`~noether_core.run.trainer.Trainer`; everything the run needs
from the config is derived in the plan, once.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml
from torch import nn
from torch.utils.data import Dataset

from noether_core.config.loader import load_config, unstructure_config
from noether_core.config.schema import RunConfig
from noether_core.errors import (
    EXIT_BY_STATUS,
    EXIT_FAILED,
    EXIT_OK,
    NoetherError,
    PeerEndedError,
    TrainingError,
    UsageError,
)
from noether_core.example import example_yaml
from noether_core.io.atomic_files import atomic_write_text
from noether_core.io.checkpoints import CheckpointWriter, load_checkpoint
from noether_core.io.log_file import RunLogFileHandler
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.metrics_file import POSITION_KEYS
from noether_core.io.paths import RunPaths, check_checkpoint_tag, check_run_id
from noether_core.io.run_directory import (
    RunLock,
    check_run_files,
    checkpoint_entries,
    create_run_directory,
    restart_run_directory,
)
from noether_core.io.trackers import (
    DiskTracker,
    Tracker,
    damaged_record_warnings,
    load_trackers,
    name_trackers,
    truncate_metrics,
)
from noether_core.plugins.hookspecs import RunStatus
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.building import OBJECT
from noether_core.run.device import pick_device
from noether_core.run.distributed import barrier, init_from_env, peer_ended, shutdown, timed_out
from noether_core.run.metric_collisions import check_metric_collisions
from noether_core.run.metric_dependencies import check_metric_dependencies, metric_properties
from noether_core.run.plan import RunPlan
from noether_core.run.signals import keep_handling_until_exit
from noether_core.run.teardown import Teardown
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
    if not is_main:
        # the other ranks have no log.txt; their errors reach the console through the CLI, once
        file_only.addHandler(logging.NullHandler())
    if paths is not None and is_main:
        file_handler = RunLogFileHandler(paths.log_txt)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
        file_only.addHandler(file_handler)


#: What ``config`` may be for :func:`train`: a YAML file, a mapping of sections, a structured config, or
#: ``None`` (the resumed run's own config, else the bundled example).
ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | RunConfig | None


def load_run_config(
    config: ConfigSource,
    overrides: Sequence[str],
    registry: PluginRegistry,
    resume: RunPaths | None = None,
    *,
    model: nn.Module | None = None,
    datasets: Mapping[str, Dataset[Any]] | None = None,
) -> tuple[RunConfig, str | None]:
    """The config of a run and the file it came from (for error messages): ``config``, else the
    resumed run's ``config.yaml``, else the bundled example; with ``overrides`` (``--set``) applied,
    and the sections of a ``model`` or ``datasets`` given as objects set to kind ``object``."""

    def objects(raw: dict[str, Any]) -> None:
        if model is not None:
            previous = raw.get("model")
            name = previous.get("name", "model") if isinstance(previous, Mapping) else "model"
            raw["model"] = {"kind": OBJECT, "name": name}
        if datasets:
            sections = raw.get("datasets")
            given = {name: {"kind": OBJECT} for name in datasets}
            raw["datasets"] = {**sections, **given} if isinstance(sections, dict) else given

    if isinstance(config, RunConfig):
        plain = unstructure_config(config, registry)
        return load_config(
            None, registry, overrides, document=plain, source="<RunConfig>", edit=objects
        ), None
    if isinstance(config, Mapping):
        return load_config(None, registry, overrides, document=config, edit=objects), "<mapping>"
    if config is not None:
        path = Path(os.fspath(config))
        return load_config(path, registry, overrides, edit=objects), str(path)
    if resume is not None:
        if not resume.config_yaml.exists():
            raise UsageError(f"{str(resume.root)!r} is not a noether run directory (it has no config.yaml)")
        return load_config(resume.config_yaml, registry, overrides, edit=objects), None
    return load_config(None, registry, overrides, text=example_yaml(), edit=objects), None


class _ErrorOnRankZero(NoetherError):
    """What the other ranks of a torchrun job raise when rank 0 could not claim the run directory."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def _claim_here(
    output_dir: str, run_id: str | None, resume: RunPaths | None, restart: bool
) -> tuple[RunPaths, RunLock, list[str]]:
    """The run directory, locked for this process: ``resume``'s, or a new one in ``output_dir``
    (started over with ``restart``); also the names a restart removed."""
    if resume is None:
        if restart:
            assert run_id is not None
            return restart_run_directory(output_dir, run_id)
        paths, lock = create_run_directory(output_dir, run_id)
        return paths, lock, []
    lock = RunLock.acquire(resume.root)
    try:
        check_run_files(resume)
        if not checkpoint_entries(resume.root):
            root = resume.root
            raise UsageError(
                f"run {str(root)!r} has no checkpoint to resume from: it stopped before its first one. "
                f"Start it over under the same id with: noether train [CONFIG] --output-dir {root.parent} "
                f"--run-id {root.name} --restart"
            )
    except BaseException:
        lock.release()
        raise
    return resume, lock, []


def _claim_run_directory(
    output_dir: str,
    run_id: str | None,
    resume: RunPaths | None,
    restart: bool,
    device: str,
    timeout: float | None = None,
) -> tuple[RunPaths, RunLock | None, list[str]]:
    """The run directory, created or checked and locked by rank 0 alone (the one process that writes
    into it); the other ranks of a torchrun job wait for its outcome and fail with it, so that no rank
    goes on into a directory that was refused. Returns the paths, the lock (rank 0) and the names a
    restart removed."""
    info = init_from_env(device, timeout)
    lock: RunLock | None = None
    removed: list[str] = []
    outcome: dict[str, Any]
    failure: BaseException | None = None
    if info.is_main:
        try:
            paths, lock, removed = _claim_here(output_dir, run_id, resume, restart)
            outcome = {"root": str(paths.root), "run_id": paths.run_id}
        except Exception as exc:  # told to the other ranks first, then raised
            failure = exc
            status = exc.exit_status if isinstance(exc, NoetherError) else EXIT_FAILED
            outcome = {"error": f"rank 0: {exc}", "exit_status": status}
    if info.is_distributed:
        import torch
        import torch.distributed as dist

        box: list[Any] = [outcome if info.is_main else None]
        on = torch.device("cuda", info.local_rank) if device == "cuda" else None
        try:
            dist.broadcast_object_list(box, src=0, device=on)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        outcome = box[0]
    if failure is not None:
        raise failure
    if "error" in outcome:
        raise _ErrorOnRankZero(str(outcome["error"]), int(outcome["exit_status"]))
    return RunPaths(Path(outcome["root"]), str(outcome["run_id"])), lock, removed


def _write_config(paths: RunPaths, plain: Mapping[str, Any]) -> None:
    """``config.yaml``, atomically, and only when its text changes (a resume with the same config
    leaves the file alone)."""
    text = yaml.safe_dump(dict(plain), sort_keys=False)
    try:
        if paths.config_yaml.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass  # no file yet, or one to replace
    try:
        atomic_write_text(paths.config_yaml, text)
    except OSError as error:
        raise TrainingError(
            f"could not write {str(paths.config_yaml)!r}: {error.strerror or error}; the file there "
            "before, if any, is unchanged"
        ) from error


def _start_trackers(
    paths: RunPaths,
    plain_config: Mapping[str, Any],
    metrics: MetricProperties,
    extra: Sequence[Tracker],
    resume_update: int | None = None,
) -> list[Tracker]:
    """The on-disk tracker and the configured ones, started on this run's directory. The configured ones
    are named by their kinds (a failure says which tracker failed); on a resume from the checkpoint at
    ``resume_update`` each is told so first (its optional ``resume``), to continue its backend's run
    without logging a step twice."""
    kinds = [str(entry.get("kind")) for entry in plain_config.get("tracker") or ()]
    trackers: list[Tracker] = [DiskTracker(metrics), *name_trackers(extra, kinds)]
    for tracker in trackers:
        resume = getattr(tracker, "resume", None)
        if resume_update is not None and callable(resume):
            resume(resume_update)
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


@attrs.frozen
class RunResult:
    """What :func:`train` and :func:`evaluate` return.

    ``status`` is how the run ended, as ``after_training`` is told: ``completed``, ``stopped`` (a plugin
    stopped it, e.g. early stopping) or ``interrupted`` (SIGTERM/SIGINT; a resumable ``latest`` was
    saved). A run that fails raises instead, as ``noether train`` exits with status 1 or 2.
    ``run_dir`` is the run directory (for an evaluation, its own ``RUN_DIR/eval/<TAG>``), ``position``
    where the run stood at the end (``epoch``, ``update``, ``sample``), and ``metrics`` the last value
    of every metric it logged.
    """

    status: RunStatus
    run_dir: Path
    position: Mapping[str, int]
    metrics: Mapping[str, float | None]


def train(
    config: ConfigSource = None,
    *,
    output_dir: str | os.PathLike[str] = "runs",
    run_id: str | None = None,
    overrides: Sequence[str] = (),
    model: nn.Module | None = None,
    datasets: Mapping[str, Dataset[Any]] | None = None,
    resume: str | os.PathLike[str] | None = None,
    checkpoint: str | None = None,
    restart: bool = False,
) -> RunResult:
    """Train a run, exactly as ``noether train`` does: the same plan, plugins, files and checks.

    ``config`` is a YAML file, a mapping of sections (as the YAML would give), a ``RunConfig``, or
    ``None`` for the bundled example; ``overrides`` are ``--set`` strings (``"trainer.max_epochs=3"``).
    ``model`` trains this module instead of building the config's ``model`` section (which may then be
    left out; the run's ``config.yaml`` records ``kind: object``), and ``datasets`` uses these
    map-style datasets for their names (``{"train": ..., "val": ...}``). ``resume`` continues the run
    in that directory from ``checkpoint`` (default: the newest resumable set, ``latest`` or a newer position
    tag); a run trained with objects is resumed with the same objects. ``restart`` starts the run
    ``run_id`` over from update 0 when it has no checkpoint (its files are removed; refused, naming them,
    if it has any).

    The run directory is locked for the whole call: a second process (or call) on the same run raises
    :class:`~noether_core.RunDirectoryBusyError`, naming the owner's pid.

    Raises what the command line reports: :class:`~noether_core.ConfigError` and
    :class:`~noether_core.UsageError` (exit status 2), :class:`~noether_core.PluginLoadError` (3),
    :class:`~noether_core.TrainingError` (1) for a run that failed.
    """
    registry = PluginRegistry.from_environment()
    resume_paths = RunPaths.existing(os.fspath(resume)) if resume is not None else None
    if checkpoint is not None and resume_paths is None:
        raise UsageError("--checkpoint only makes sense with --resume RUN_DIR")
    if run_id is not None:
        check_run_id(run_id)
    if checkpoint is not None:
        check_checkpoint_tag(checkpoint)
    if restart and resume_paths is not None:
        raise UsageError("--restart starts a run over from update 0; it cannot be combined with --resume")
    if restart and run_id is None:
        raise UsageError("--restart needs --run-id ID: the run to start over")
    config_, source = load_run_config(
        config, overrides, registry, resume_paths, model=model, datasets=datasets
    )
    plan = RunPlan(config_, registry, source=source, model=model, datasets=datasets)
    check_metric_dependencies(plan)
    check_metric_collisions(plan)
    extra_trackers = load_trackers(config_.tracker)  # before anything is written: bad kinds are config errors
    plan.geometry  # noqa: B018 (and a run too long to count: refused before its directory exists)
    plan.plugin_manager(defaults=False)  # a plugin constructor that raises: also before the directory
    # a damaged summary.yaml refuses the resume here, not at its end
    damaged = damaged_record_warnings(resume_paths) if resume_paths is not None else []

    device = pick_device(config_.trainer.device).type
    paths, lock, removed = _claim_run_directory(
        os.fspath(output_dir), run_id, resume_paths, restart, device, config_.trainer.process_group_timeout
    )
    try:
        return _train_in(paths, plan, registry, extra_trackers, resume_paths, checkpoint, removed, damaged)
    finally:
        # the trainer lives in reference cycles (plugins and the run's view of it point back at it): free
        # it, its model and its optimizer now, not at some later collection (a Python-API user training
        # again gets the memory back at once; under torchrun the process group is gone already, see
        # _release_process_group)
        gc.collect()
        if lock is not None:
            lock.release()  # last: the files are complete when the next process may take the run


def _train_in(
    paths: RunPaths,
    plan: RunPlan,
    registry: PluginRegistry,
    extra_trackers: Sequence[Tracker],
    resume_paths: RunPaths | None,
    checkpoint: str | None,
    removed: Sequence[str],
    damaged: Sequence[str],
) -> RunResult:
    """:func:`train` in its run directory, which this process owns now."""
    config_ = plan.config
    info = init_from_env(pick_device(config_.trainer.device).type)
    setup_logging(paths, info.is_main)
    if removed:
        log.info("restart: removed %s from %s", ", ".join(removed), paths.root)
    for warning in damaged:
        log.warning("%s", warning)
    metrics = metric_properties(plan)
    # the trainer checks the checkpoint before this run's files are touched: a refused resume changes
    # nothing on disk; without --checkpoint it resumes from the newest resumable set
    trainer = Trainer(plan, paths, metrics=metrics, resume_tag=checkpoint, resume_paths=resume_paths)
    resume_tag = trainer.resume_tag
    if info.is_main:
        CheckpointWriter(paths).recover()
        if resume_tag is not None:
            _forget_metrics_after(paths, config_.model.name, resume_tag)
        plain = unstructure_config(config_, registry)
        _write_config(paths, plain)
        resume_update = trainer.counter.update if resume_tag is not None else None  # the checkpoint's
        trainer.attach_trackers(_start_trackers(paths, plain, metrics, extra_trackers, resume_update))
    log.info("run directory: %s", paths.root)
    failure: BaseException | None = None
    try:
        status = trainer.fit()
        # every rank tears the process group down together: a gloo rank whose peer already left can abort
        barrier(trainer.dist)
    except Exception as exc:
        failure = exc
        # the console gets one paragraph (the CLI prints it); the traceback goes to log.txt
        logging.getLogger("noether.file").exception("training failed")
        if trainer.dist.is_distributed and _caused_by(exc, peer_ended):
            # the process that ended first says why; this one adds no second message to the console
            ended = PeerEndedError(
                f"rank {trainer.rank} stopped at update {trainer.counter.update}: another process of "
                f"the run ended first ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            )
            logging.getLogger("noether.file").error("%s", ended)
            raise ended from exc
        if trainer.dist.is_distributed and _caused_by(exc, timed_out):
            raise TrainingError(
                f"training failed at update {trainer.counter.update}: another process did not answer "
                f"within trainer.process_group_timeout={config_.trainer.process_group_timeout:g}s (it "
                f"hangs, or waits in another collective) ({' '.join(str(exc).split())[:200]})"
            ) from exc
        if isinstance(exc, NoetherError):
            raise
        raise TrainingError(
            f"training failed at update {trainer.counter.update}: {type(exc).__name__}: {exc} "
            f"(full traceback in {paths.log_txt})"
        ) from exc
    except BaseException as exc:
        failure = exc
        raise
    finally:
        teardown = Teardown(failure)
        teardown.run("releasing the process group", _release_process_group, trainer)
        teardown.run("leaving the process group", shutdown, trainer.dist)
        teardown.raise_first()
    result = _result(status, paths, trainer)
    _log_metrics(result.metrics, "final metrics")
    log.info("run %s %s at %s; files in %s", paths.run_id, status, trainer.counter.tag, paths.root)
    if status == "interrupted":
        log.info("resume with: noether train --resume %s", paths.root)
    return result


def _release_process_group(trainer: Trainer) -> None:
    """Drop DistributedDataParallel (its reducer holds the process group) and the run's cycles, so that
    ``destroy_process_group`` drops the group's last reference and destroys it then, on every rank at
    the same point, rather than whenever a later collection (or the interpreter's finalization) happens
    to free the wrapper; gloo's destructor joins its worker threads, which is not safe that late."""
    if trainer.train_model is not trainer.model:
        trainer.train_model = trainer.model
        gc.collect()


def _caused_by(exc: BaseException, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc``, or an error it was raised from (a plugin's collective), passes ``test``."""
    seen: BaseException | None = exc
    while seen is not None:
        if test(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def evaluate(
    run_dir: str | os.PathLike[str],
    checkpoint: str = "last",
    *,
    model: nn.Module | None = None,
    datasets: Mapping[str, Dataset[Any]] | None = None,
) -> RunResult:
    """Evaluate checkpoint ``checkpoint`` of the run in ``run_dir`` with the run's own evaluators
    (``at_eval(interval="eval")``), as ``noether eval`` does.

    The evaluation is kept apart from the training: its ``metrics.jsonl``, ``summary.yaml`` and
    ``log.txt`` go to ``RUN_DIR/eval/<TAG>/`` (replacing an earlier evaluation of the same tag), and the
    run's extra trackers get its values under ``eval/``. ``checkpoint="best"`` is the run's best
    checkpoint when it has exactly one. ``model`` and ``datasets`` stand in for objects the run was
    trained with (see :func:`train`).
    """
    check_checkpoint_tag(checkpoint)
    paths = RunPaths.existing(os.fspath(run_dir))
    with RunLock.acquire(paths.root):  # the run's trackers' files are written too, and eval/<TAG>/
        try:
            return _evaluate_in(paths, checkpoint, model, datasets)
        finally:
            gc.collect()  # as in train(): the trainer's reference cycles go before the call returns


def _evaluate_in(
    paths: RunPaths,
    checkpoint: str,
    model: nn.Module | None,
    datasets: Mapping[str, Dataset[Any]] | None,
) -> RunResult:
    """:func:`evaluate` of the run in ``paths``, which this process owns now."""
    registry = PluginRegistry.from_environment()
    config, source = load_run_config(None, (), registry, paths, model=model, datasets=datasets)
    plan = RunPlan(config, registry, source=source, defaults=False, model=model, datasets=datasets)
    tag = _checkpoint_tag(paths, checkpoint)
    extra = load_trackers(config.tracker)  # before anything is written: bad kinds are config errors
    metrics = metric_properties(plan)
    eval_paths = RunPaths(paths.root / "eval" / tag, tag)
    trainer = Trainer(plan, eval_paths, metrics=metrics)
    trainer.load_weights(paths, tag)  # a tag without weights fails here, before the directory exists
    check_run_files(eval_paths)
    eval_paths.root.mkdir(parents=True, exist_ok=True)
    for stale in (eval_paths.metrics_jsonl, eval_paths.summary_yaml, eval_paths.log_txt):
        stale.unlink(missing_ok=True)  # an evaluation of the same tag again replaces the earlier one
    setup_logging(eval_paths)
    plain = unstructure_config(config, registry)
    disk = DiskTracker(metrics)
    disk.start(eval_paths, plain)
    training_status = _previous_status(paths)
    kinds = [entry.kind for entry in config.tracker]
    joined = name_trackers([EvalTracker(t, training_status) for t in extra], kinds)
    for tracker in joined:  # the training run's own trackers: the evaluation joins its runs there
        tracker.start(paths, plain)
    trainer.attach_trackers([disk, *joined])
    if not trainer.plugins.scheduled:
        log.warning("the run's config has no entry with at_eval (an evaluator): nothing to evaluate")
    trainer.evaluate(status="completed")
    result = _result("completed", eval_paths, trainer)
    _log_metrics(result.metrics, f"checkpoint {tag} at {trainer.counter.tag}")
    log.info(
        "evaluated %s (checkpoint %s at %s); files in %s",
        paths.root,
        tag,
        trainer.counter.tag,
        eval_paths.root,
    )
    return result


def _previous_status(paths: RunPaths) -> str:
    """How the training in ``paths`` ended, from its ``summary.yaml`` (``completed`` when unknown)."""
    try:
        summary = yaml.safe_load(paths.summary_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "completed"
    status = summary.get("status") if isinstance(summary, dict) else None
    return str(status) if status else "completed"


class EvalTracker:
    """A run's extra tracker during ``noether eval``: every key under ``eval/``, and at the end the
    training run's own status (an evaluation does not change how the training ended)."""

    def __init__(self, tracker: Tracker, training_status: str) -> None:
        self.tracker = tracker
        self.training_status = training_status

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        self.tracker.start(paths, config)

    def log(self, record: Mapping[str, float | int]) -> None:
        self.tracker.log({k if k in POSITION_KEYS else f"eval/{k}": v for k, v in record.items()})

    def set_summary(self, key: str, value: Any) -> None:
        self.tracker.set_summary(f"eval/{key}", value)

    def close(self, status: str) -> None:
        self.tracker.close(self.training_status)


def _checkpoint_tag(paths: RunPaths, checkpoint: str) -> str:
    """``checkpoint``, or for ``best`` the run's one ``best_model.*`` tag (tolerances and the top-k
    tags of ``save_top_k`` aside)."""
    if checkpoint != "best":
        return checkpoint
    tags = paths.all_checkpoint_tags()
    best = [t for t in tags if t.startswith("best_model.") and ".tolerance=" not in t and ".top=" not in t]
    if len(best) != 1:
        which = "no best checkpoint" if not best else f"{len(best)} best checkpoints"
        raise UsageError(
            f"--checkpoint best: run {str(paths.root)!r} has {which}; name one with --checkpoint TAG "
            f"(tags present: {', '.join(tags) or 'none'})"
        )
    return best[0]


def _result(status: RunStatus, paths: RunPaths, trainer: Trainer) -> RunResult:
    counter = trainer.counter
    tracker = trainer.tracker
    summary = tracker.metric_summary() if isinstance(tracker, DiskTracker) else {}
    return RunResult(
        status=status,
        run_dir=paths.root,
        position={"epoch": counter.epoch, "update": counter.update, "sample": counter.sample},
        metrics={key: stats.get("last") for key, stats in summary.items()},
    )


def _log_metrics(metrics: Mapping[str, float | None], title: str, limit: int = 20) -> None:
    """A short table of the last values, at the end of a run or an evaluation."""
    if not metrics:
        return
    keys = sorted(metrics)
    width = max(len(k) for k in keys[:limit])
    lines = [f"{title}:"]
    for key in keys[:limit]:
        value = metrics[key]
        lines.append(f"  {key:<{width}}  {'-' if value is None else f'{value:.6g}'}")
    if len(keys) > limit:
        lines.append(f"  ... and {len(keys) - limit} more in summary.yaml")
    log.info("\n".join(lines))


def train_from_cli(
    *,
    config_path: Path | None,
    overrides: Sequence[str],
    output_dir: Path,
    run_id: str | None,
    resume: Path | None,
    checkpoint: str | None,
    ends_process: bool = False,
    restart: bool = False,
) -> int:
    """``noether train``: the exit status of the run's ending (0 completed or stopped, 130 interrupted).
    ``ends_process``: the process exits after the run, so a signal that arrives after it changes
    nothing (it would otherwise kill the process, status 143)."""
    if ends_process:
        keep_handling_until_exit()
    result = train(
        config_path,
        output_dir=output_dir,
        run_id=run_id,
        overrides=overrides,
        resume=resume,
        checkpoint=checkpoint,
        restart=restart,
    )
    return EXIT_BY_STATUS[result.status]


def eval_from_cli(*, run_dir: Path, checkpoint: str) -> int:
    """``noether eval``."""
    evaluate(run_dir, checkpoint)
    return EXIT_OK


__all__ = [
    "ConfigSource",
    "EvalTracker",
    "RunResult",
    "eval_from_cli",
    "evaluate",
    "load_run_config",
    "setup_logging",
    "train",
    "train_from_cli",
]
