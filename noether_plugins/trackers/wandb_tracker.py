"""The ``wandb`` tracker: one Weights & Biases run per noether run, online or offline."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from noether_core import ConfigError, ConfigIssue, RunPaths
from noether_plugins.trackers._support import check_type, read_state, require, write_state

#: W&B's modes (``wandb.init(mode=...)``).
MODES = ("online", "offline", "disabled")
#: Seconds between two writes of the last logged update to ``wandb.json``.
SAVE_SECONDS = 1.0


class WandbTracker:
    """Logs to Weights & Biases with ``wandb.init``; the run's files go under ``RUN_DIR/wandb/`` (or
    ``dir/wandb/``).

    * ``mode``: ``online``, ``offline`` (no network: ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads
      later) or ``disabled``; ``null`` leaves it to W&B (``WANDB_MODE``, ``wandb online``/``offline``).
      Online needs a login (``wandb login`` or ``WANDB_API_KEY``).
    * ``project``, ``entity``, ``group``, ``tags`` and ``notes`` are W&B's own; ``name`` defaults to the
      run id. ``settings`` are more ``wandb.Settings`` fields (``{console: "off"}``).
    * The resolved config is the run's config; summaries go to the run's summary.
    * Every record is one history row with ``update``, ``epoch`` and ``sample`` and the metrics; every
      metric is plotted against ``update`` (``define_metric("*", step_metric="update")``), so a record
      may come at an update earlier than the last one (``noether eval``).
    * The run's id is kept in ``RUN_DIR/wandb.json``: a resumed run, and ``noether eval``, continue the
      same W&B run (``resume="allow"``), and a resume from the checkpoint at update ``U`` leaves out the
      records of updates after ``U`` that W&B was given already (up to the last update ``wandb.json``
      holds, written at least once a second and before every checkpoint).
    * The end: ``finish(exit_code=0)`` for a completed or stopped run, ``1`` for a failed one; an
      interrupted run is marked preempting first.
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self._wandb = require("wandb", tracker="wandb", extra="wandb")
        for field, value in (
            ("project", project),
            ("entity", entity),
            ("name", name),
            ("group", group),
            ("notes", notes),
            ("dir", dir),
        ):
            check_type(value, (str, type(None)), field, "a string or null")
        check_type(tags, (list, tuple, type(None)), "tags", "a list of strings or null")
        check_type(settings, (Mapping, type(None)), "settings", "a mapping of wandb.Settings fields")
        if mode is not None and mode not in MODES:
            raise ConfigError(
                [ConfigIssue("kwargs.mode", f"must be one of {', '.join(MODES)} or null, got {mode!r}")]
            )
        self.options: dict[str, Any] = {
            "project": project,
            "entity": entity,
            "group": group,
            "tags": None if tags is None else [str(tag) for tag in tags],
            "notes": notes,
            "mode": mode,
        }
        self.name = name
        self.dir = dir
        self.settings: Any = None
        if settings:
            try:  # W&B checks the fields when the object is made: a typo fails validation, not the run
                self.settings = self._wandb.Settings(**settings)
            except Exception as error:
                message = " ".join(str(error).split())
                raise ConfigError(
                    [ConfigIssue("kwargs.settings", f"not wandb.Settings: {message}")]
                ) from error
        self.run: Any = None
        self._state_file: Path | None = None
        self._state: dict[str, Any] = {}
        self._resume_update: int | None = None
        # records of updates in (after, through] were given to W&B already (a resume): not again
        self._skip: tuple[int, int] | None = None
        self._last = -1
        self._save_at = 0.0

    def resume(self, update: int) -> None:
        """The run resumes from the checkpoint at ``update``: updates after it already logged are
        skipped."""
        self._resume_update = update

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        """Start the W&B run, or resume the one ``RUN_DIR/wandb.json`` names."""
        wandb = self._wandb
        self._state_file = paths.root / "wandb.json"
        state = read_state(self._state_file)
        directory = Path(self.dir).expanduser() if self.dir else paths.root
        directory.mkdir(parents=True, exist_ok=True)
        options = {key: value for key, value in self.options.items() if value is not None}
        if self.settings is not None:
            options["settings"] = self.settings
        run_id = state.get("run_id")
        if run_id:
            self.run = run = wandb.init(
                id=run_id, resume="allow", name=self.name or paths.run_id, dir=str(directory), **options
            )
            run.config.update(dict(config), allow_val_change=True)
        else:
            self.run = run = wandb.init(
                name=self.name or paths.run_id, dir=str(directory), config=dict(config), **options
            )
        run.define_metric("update")
        run.define_metric("*", step_metric="update")
        self._last = int(state.get("last_update", -1)) if run_id else -1
        if self._resume_update is not None and self._last > self._resume_update:
            self._skip = (self._resume_update, self._last)
        self._state = {"run_id": run.id, "last_update": self._last}
        write_state(self._state_file, self._state)
        self._save_at = time.monotonic() + SAVE_SECONDS

    def log(self, record: Mapping[str, float | int]) -> None:
        """One history row: ``update``, ``epoch``, ``sample`` and the record's metrics."""
        update = int(record["update"])
        if self._skip is not None:
            after, through = self._skip
            if after < update <= through:
                return  # W&B has it already, from the process that logged it first
            if update > through:
                self._skip = None
        self.run.log(dict(record))
        if update > self._last:
            self._last = update
        if time.monotonic() >= self._save_at:
            self._save()

    def _save(self) -> None:
        if self._state_file is not None and self._state.get("last_update") != self._last:
            self._state["last_update"] = self._last
            write_state(self._state_file, self._state)
        self._save_at = time.monotonic() + SAVE_SECONDS

    def flush(self) -> None:
        """Record the last update given to W&B (before a checkpoint)."""
        self._save()

    def set_summary(self, key: str, value: Any) -> None:
        """``value`` in the run's summary under ``key``."""
        self.run.summary[key] = value

    def close(self, status: str) -> None:
        """Finish the W&B run with the exit code of ``status``."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            self._save()
        finally:
            if status == "interrupted":
                run.mark_preempting()
            run.finish(exit_code=0 if status in ("completed", "stopped") else 1)
