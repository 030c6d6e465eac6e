"""The ``tensorboard`` tracker: TensorBoard event files, one scalar tag per metric key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noether_core import RunPaths
from noether_plugins.trackers._support import POSITION_KEYS, check_type, flatten, require


class TensorBoardTracker:
    """Writes TensorBoard event files with PyTorch's ``SummaryWriter``, into ``RUN_DIR/tensorboard/``, or
    into ``log_dir/<run id>/`` when ``log_dir`` is given (so that ``tensorboard --logdir LOG_DIR`` shows
    many runs side by side).

    * Every metric key is a scalar tag, at step ``update``.
    * With ``hparams`` (the default), the resolved config, flattened (``trainer.max_epochs``), is the
      run's hyperparameters in the HParams dashboard, which takes the scalar tags as its metrics.
    * Summaries are text, under ``summary/<key>``; the run's final status is the text ``status``.

    ``flush_secs`` is how often the writer hands its events to the file; it also does so before every
    checkpoint and at the end. A resume from the checkpoint at update ``U`` opens its writer with
    ``purge_step=U+1``: TensorBoard then hides what the earlier process wrote for updates after ``U``,
    which come again. Plugins reach the ``SummaryWriter`` as :attr:`writer` (images, histograms).
    """

    def __init__(self, log_dir: str | None = None, flush_secs: int = 30, hparams: bool = True) -> None:
        require("tensorboard", tracker="tensorboard", extra="tensorboard")
        self._board = require("torch.utils.tensorboard", tracker="tensorboard", extra="tensorboard")
        self._summary = require("torch.utils.tensorboard.summary", tracker="tensorboard", extra="tensorboard")
        self._proto = require(
            "tensorboard.compat.proto.summary_pb2", tracker="tensorboard", extra="tensorboard"
        )
        check_type(log_dir, (str, type(None)), "log_dir", "a directory or null")
        check_type(flush_secs, int, "flush_secs", "a whole number of seconds")
        check_type(hparams, bool, "hparams", "true or false")
        self.log_dir = log_dir
        self.flush_secs = flush_secs
        self.hparams = hparams
        self.writer: Any = None
        self.directory: Path | None = None
        self._purge_step: int | None = None
        self._update = 0

    def resume(self, update: int) -> None:
        """The run resumes from the checkpoint at ``update``: later steps are purged."""
        self._purge_step = update + 1

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        """Open the writer; write the hyperparameters."""
        if self.log_dir is not None:
            self.directory = Path(self.log_dir).expanduser() / paths.run_id
        else:
            self.directory = paths.root / "tensorboard"
        self.writer = self._board.SummaryWriter(
            log_dir=str(self.directory), purge_step=self._purge_step, flush_secs=self.flush_secs
        )
        if self._purge_step is not None:
            self._update = self._purge_step - 1
        if self.hparams:
            values = {key: _hparam(value) for key, value in flatten(config).items()}
            _, session_start, _ = self._summary.hparams(values, {})
            self.writer.file_writer.add_summary(session_start)

    def log(self, record: Mapping[str, float | int]) -> None:
        """One event at step ``update`` holding every metric of ``record``."""
        update = int(record["update"])
        self._update = update
        summary = self._proto.Summary
        # one event per record: SummaryWriter.add_scalar per key costs about a tenth of a millisecond
        # each, which a run that tracks many keys at every update would feel
        event = summary(
            value=[
                summary.Value(tag=key, simple_value=value)
                for key, value in record.items()
                if key not in POSITION_KEYS
            ]
        )
        self.writer.file_writer.add_summary(event, update)

    def set_summary(self, key: str, value: Any) -> None:
        """``value`` as text under ``summary/<key>``: a number or string as it is, anything else as
        JSON."""
        self.writer.add_text(f"summary/{key}", _text(value), global_step=self._update)

    def flush(self) -> None:
        """Write the pending events to the file (before a checkpoint)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self, status: str) -> None:
        """Record the status and close the writer."""
        if self.writer is None:
            return
        self.writer.add_text("status", status, global_step=self._update)
        self.writer.close()
        self.writer = None


def _hparam(value: Any) -> bool | int | float | str:
    # what the HParams plugin holds: a number, a bool or a string
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def _text(value: Any) -> str:
    if isinstance(value, bool | int | float | str):
        return str(value)
    # TensorBoard renders text as Markdown: a code block keeps the JSON's indentation
    block = json.dumps(value, indent=2, default=str)
    return f"```\n{block}\n```"
