"""Every error type noether raises. Each carries what it concerns (a config path, a plugin kind, a file)
so the CLI can print one clear paragraph and pick the exit status, instead of a traceback."""

from __future__ import annotations

from collections.abc import Sequence

import attrs


def raised_at(exc: BaseException) -> str:
    """`` (at FILE:LINE)`` of the frame that raised ``exc``, for one-line messages that point at the
    code; ``""`` when the exception carries no traceback."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PLUGIN = 3
EXIT_INTERRUPTED = 130
#: The exit status of ``noether train`` for each way a run ends (``summary.yaml``'s ``status``).
EXIT_BY_STATUS = {
    "completed": EXIT_OK,
    "stopped": EXIT_OK,
    "interrupted": EXIT_INTERRUPTED,
    "failed": EXIT_FAILED,
}


class NoetherError(Exception):
    """Base of every error noether reports to a user. ``exit_status`` is what the CLI exits with."""

    exit_status = EXIT_FAILED


@attrs.frozen
class ConfigIssue:
    """One problem in a config: where (``callbacks[2].every_n_epochs``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(NoetherError):
    """An invalid config. Lists every problem found, one per line, each with its path."""

    exit_status = EXIT_USAGE

    def __init__(self, issues: Sequence[ConfigIssue], source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        n = len(self.issues)
        head = f"invalid config{where} ({n} problem{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  {issue}" for issue in self.issues)])


class UsageError(NoetherError):
    """A command line that cannot be carried out (missing file, bad ``--set``)."""

    exit_status = EXIT_USAGE


class RunDirectoryBusyError(UsageError):
    """A run directory that another process owns: it is training, resuming or evaluating that run and
    holds the directory's lock (``RUN_DIR/.lock``). ``pid``, ``host`` and ``command`` describe that
    process as it recorded itself (``None`` where it had not yet); exit status 2."""

    def __init__(
        self, path: object, pid: int | None, host: str | None = None, command: str | None = None
    ) -> None:
        self.path = str(path)
        self.pid = pid
        self.host = host
        self.command = command
        if pid is None:
            holder = "another process"
        else:
            holder = f"process {pid}" + (f" on {host}" if host else "")
            if command:
                holder += f" ({command})"
        super().__init__(
            f"run directory {self.path!r} is in use by {holder}; only one process may train, resume or "
            "evaluate a run at a time. Wait for it to end or stop it, then try again."
        )


class PluginLoadError(NoetherError):
    """A plugin that could not be imported or is not a valid plugin.

    Raised only for runs (or commands) that name the plugin; every other plugin stays usable.
    """

    exit_status = EXIT_PLUGIN

    def __init__(
        self,
        kind: str,
        reason: str,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        self.kind = kind
        self.reason = reason
        self.distribution = distribution
        self.version = version
        origin = f" from {distribution} {version}" if distribution else ""
        super().__init__(f"plugin {kind!r}{origin} cannot be used: {reason}")


class PluginValidationError(PluginLoadError):
    """A plugin that imports but breaks the hook contract (a misspelled hook, an unknown argument)."""


class UnknownKindError(PluginLoadError):
    """A kind no installed distribution provides: a config mistake (exit status 2), not a broken plugin."""

    exit_status = EXIT_USAGE


class ImportPathError(LookupError):
    """An import path that names nothing: no module of that name, or no such attribute in it.

    A mistake in the path (a typo in a config), as opposed to a module that exists but fails to import.
    ``module`` is the module that is missing, or the one that lacks ``attribute``; ``suggestion`` a
    corrected path when the module has an attribute close to the one asked for.
    """

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        module: str,
        attribute: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.path = path
        self.reason = reason
        self.module = module
        self.attribute = attribute
        self.suggestion = suggestion
        super().__init__(reason)


class TrainingError(NoetherError):
    """A run that failed after it started (exit status 1)."""


class PluginFailure(TrainingError):
    """A plugin raised during an event. ``entry`` is the entry's name (its state key), ``kind`` its
    plugin, ``hook`` the event."""

    def __init__(self, entry: str, kind: str, hook: str, exc: BaseException) -> None:
        self.entry = entry
        self.kind = kind
        self.hook = hook
        if isinstance(exc, SystemExit):
            what = (
                f"it called sys.exit({exc.code!r}); a plugin ends a run with trainer.request_stop(reason) "
                "or by raising an exception"
            )
        elif isinstance(exc, KeyboardInterrupt):
            what = "it raised KeyboardInterrupt; a plugin ends a run with trainer.request_stop(reason)"
        else:
            what = f"{type(exc).__name__}: {exc}"
        super().__init__(f"plugin {entry!r} ({kind}) failed in {hook}: {what}")


class PeerEndedError(TrainingError):
    """This process of a distributed run failed because another one ended first (a collective lost its
    peer). That process reports its own failure, and ``torchrun`` names it; this one does not add a
    second message to the console (``quiet``), only to ``log.txt``."""

    quiet = True


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite (and ``trainer.skip_nan_loss`` does not allow skipping it)."""


class ImmediateStop(KeyboardInterrupt):
    """A second SIGINT: the run stops where it is (after a checkpoint write in progress), without saving
    a checkpoint (exit status 1). A ``KeyboardInterrupt`` so that nothing on the way (a plugin's
    ``except Exception``) swallows it; raised by the trainer's signal handler only, so that the dispatch
    tells it from a plugin's own ``KeyboardInterrupt`` (that plugin's failure)."""


class CheckpointWriteError(NoetherError):
    """A checkpoint file that could not be written (disk full, permission denied, an object that cannot
    be pickled or would not load with ``weights_only=True``). The file previously at ``path``, if any,
    is untouched and the partial temporary file has been removed."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"could not write checkpoint {self.path!r}: {reason}. The previous file at that path, if "
            "any, is unchanged."
        )


class CheckpointLoadError(NoetherError):
    """A checkpoint file that is missing, truncated, corrupt, or holds objects that
    ``torch.load(weights_only=True)`` refuses. Exit status 2: the user pointed at something unusable
    (``--resume``, ``noether eval --checkpoint``)."""

    exit_status = EXIT_USAGE

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load checkpoint {self.path!r}: {reason}")


class DuplicateMetricError(NoetherError):
    """A metric key logged twice in one step by plugins that are not both trainer defaults.

    Two values for one key in one record would silently shadow each other; give one of the entries a
    different interval or metric name instead.
    """

    def __init__(self, key: str, update: int, first_owner: str, second_owner: str) -> None:
        self.key = key
        self.update = update
        self.first_owner = first_owner
        self.second_owner = second_owner
        by = (
            f"twice by {first_owner!r}"
            if first_owner == second_owner
            else f"by {first_owner!r} and again by {second_owner!r}"
        )
        super().__init__(
            f"metric {key!r} was logged {by} at update {update}. Each key may be logged once per step; "
            "rename one of the metrics or give the entries different intervals."
        )


class UnknownMetricDirectionError(NoetherError):
    """A metric whose better direction is needed (best checkpoint, early stopping, best metric) but is
    unknown or neutral. Register a pattern for it: ``trainer.metrics.register("val/my_score",
    "higher")``."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"cannot tell whether higher or lower is better for metric {key!r}: {reason}. Register a "
            "pattern for it before it is used, e.g. metrics.register("
            f"{key!r}, 'higher') or metrics.register({key!r}, 'lower') on the run's MetricProperties "
            "(trainer.metrics); patterns are fnmatch globs matched against the lower-cased key."
        )


__all__ = [
    "EXIT_BY_STATUS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PLUGIN",
    "EXIT_USAGE",
    "CheckpointLoadError",
    "CheckpointWriteError",
    "ConfigError",
    "ConfigIssue",
    "DuplicateMetricError",
    "ImmediateStop",
    "ImportPathError",
    "NoetherError",
    "NonFiniteLossError",
    "PeerEndedError",
    "PluginFailure",
    "PluginLoadError",
    "PluginValidationError",
    "RunDirectoryBusyError",
    "TrainingError",
    "UnknownKindError",
    "UnknownMetricDirectionError",
    "UsageError",
    "raised_at",
]
