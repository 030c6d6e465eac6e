"""The ``mlflow`` tracker: one MLflow run per noether run, in a local SQLite store or a tracking
server."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noether_core import RunPaths
from noether_plugins.trackers._support import (
    POSITION_KEYS,
    check_type,
    flatten,
    read_state,
    require,
    write_state,
)

#: The run's final status as MLflow's run status.
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
#: MLflow's limits (``mlflow.utils.validation``): entities per ``log_batch``, key and value lengths.
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
# what MLflow accepts in a metric, parameter or tag name; anything else becomes "_"
_NOT_ALLOWED = re.compile(r"[^\w./\- :]")


class MlflowTracker:
    """Logs to MLflow: by default into a SQLite store in the run directory,
    ``sqlite:///RUN_DIR/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``
    shows it); with ``tracking_uri`` (or the ``MLFLOW_TRACKING_URI`` environment variable) into that
    store, e.g. the server a team runs (``http://mlflow.example:5000``).

    * One MLflow run per noether run, in the experiment ``experiment_name`` (created when missing),
      named ``run_name`` (default: the run id), with ``tags``. Its id is kept in ``RUN_DIR/mlflow.json``;
      a resumed run, and ``noether eval``, continue that MLflow run.
    * Parameters: the resolved config, flattened (``trainer.max_epochs``, ``callbacks.0.kind``).
    * Metrics: every key of every record, at ``step`` = ``update``. Characters MLflow does not allow in
      a name become ``_`` (``ema=0.999/loss`` is ``ema_0.999/loss``). Records are sent in batches, at
      least every ``flush_seconds``, before every checkpoint and at the end.
    * Summaries: tags (``param_count/model``), structures as JSON.
    * The final status: ``FINISHED`` (completed, stopped), ``KILLED`` (interrupted) or ``FAILED``; the
      tag ``noether.status`` says which.

    A resume from the checkpoint at update ``U`` continues the MLflow run and leaves out the records of
    updates after ``U`` that the store already has (up to the last update ``mlflow.json`` says was sent).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "noether",
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        flush_seconds: float = 1.0,
    ) -> None:
        self._mlflow = require("mlflow", tracker="mlflow", extra="mlflow")
        self._entities = require("mlflow.entities", tracker="mlflow", extra="mlflow")
        check_type(tracking_uri, (str, type(None)), "tracking_uri", "a tracking URI or null")
        check_type(experiment_name, str, "experiment_name", "an experiment name")
        check_type(run_name, (str, type(None)), "run_name", "a run name or null")
        check_type(tags, (Mapping, type(None)), "tags", "a mapping of tag names to values")
        check_type(flush_seconds, (int, float), "flush_seconds", "a number of seconds")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.flush_seconds = float(flush_seconds)
        self.client: Any = None
        self.run_id: str | None = None
        self._state_file: Path | None = None
        self._state: dict[str, Any] = {}
        self._resume_update: int | None = None
        # records of updates in (after, through] are in the store already (a resume): not sent again
        self._skip: tuple[int, int] | None = None
        self._pending: list[Any] = []
        self._pending_last = -1
        self._send_at = 0.0
        self._names: dict[str, str] = {}

    def resume(self, update: int) -> None:
        """The run resumes from the checkpoint at ``update``: updates after it already sent are skipped."""
        self._resume_update = update

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        """Create the MLflow run, or continue the one ``RUN_DIR/mlflow.json`` names; log the parameters."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        store = uri or f"sqlite:///{(paths.root / 'mlflow.db').resolve()}"
        self.client = client = self._mlflow.MlflowClient(tracking_uri=store)
        self._state_file = paths.root / "mlflow.json"
        state = read_state(self._state_file)
        run = None
        if state.get("run_id") and state.get("tracking_uri") == uri:
            try:
                run = client.get_run(state["run_id"])
            except self._mlflow.MlflowException:
                run = None  # deleted, or another store: a new run
        params = {self._name(k): _param(v) for k, v in flatten(config).items()}
        if run is not None:
            client.update_run(run.info.run_id, status="RUNNING")
            known = run.data.params
            params = {k: v for k, v in params.items() if k not in known}  # MLflow refuses a changed value
            last = int(state.get("last_update", -1))
        else:
            run = client.create_run(
                self._experiment_id(client, paths, uri is None),
                run_name=self.run_name or paths.run_id,
                tags={
                    "noether.run_id": paths.run_id,
                    "noether.run_dir": str(paths.root.resolve()),
                    **self.tags,
                },
            )
            last = -1
        self.run_id = run.info.run_id
        self._state = {"tracking_uri": uri, "run_id": self.run_id, "last_update": last}
        write_state(self._state_file, self._state)
        if self._resume_update is not None and last > self._resume_update:
            self._skip = (self._resume_update, last)
        param = self._entities.Param
        items = [param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_BATCH])
        self._send_at = time.monotonic() + self.flush_seconds

    def _experiment_id(self, client: Any, paths: RunPaths, local: bool) -> str:
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        # a local store keeps its artifacts beside it, not in the current directory
        location = (paths.root / "mlartifacts").resolve().as_uri() if local else None
        return str(client.create_experiment(self.experiment_name, artifact_location=location))

    def _name(self, key: str) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = _NOT_ALLOWED.sub("_", key)[:_MAX_KEY]
        return name

    def log(self, record: Mapping[str, float | int]) -> None:
        """Queue the record's metrics at ``step`` = ``update``; send the queue when it is due."""
        update = int(record["update"])
        if self._skip is not None:
            after, through = self._skip
            if after < update <= through:
                return  # the store has it already, from the process that logged it first
            if update > through:
                self._skip = None
        metric = self._entities.Metric
        stamp = int(time.time() * 1000)
        self._pending += [
            metric(self._name(key), float(value), stamp, update)
            for key, value in record.items()
            if key not in POSITION_KEYS
        ]
        self._pending_last = max(self._pending_last, update)
        if len(self._pending) >= _METRICS_PER_BATCH or time.monotonic() >= self._send_at:
            self._send()

    def _send(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[i : i + _METRICS_PER_BATCH])
        self._send_at = time.monotonic() + self.flush_seconds
        if self._pending_last > self._state["last_update"]:
            # what a resume must not send again; written after the store has it
            self._state["last_update"] = self._pending_last
            assert self._state_file is not None
            write_state(self._state_file, self._state)

    def flush(self) -> None:
        """Send the queued metrics (before a checkpoint)."""
        if self.client is not None and self._pending:
            self._send()

    def set_summary(self, key: str, value: Any) -> None:
        """``value`` as the tag ``key`` (a structure as JSON)."""
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        self.client.set_tag(self.run_id, self._name(key), text[:_MAX_TAG_VALUE])

    def close(self, status: str) -> None:
        """Send what is queued, tag the status and end the MLflow run with it."""
        if self.client is None or self.run_id is None:
            return
        try:
            self.flush()
            self.client.set_tag(self.run_id, "noether.status", status)
        finally:
            self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))
            self.client = None


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_VALUE]
