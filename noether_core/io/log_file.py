"""The run's ``log.txt``: a logging handler that a full disk cannot turn into tracebacks.

:class:`logging.FileHandler` answers a failed write by printing ``--- Logging error ---`` and a
traceback for every record that follows, and its ``flush``/``close`` raise: on a full disk a run's
real error drowns in them, or is replaced by them at teardown. :class:`RunLogFileHandler` stops
writing at its first failure instead, says so in one line on stderr, and never raises afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from noether_core.errors import UsageError


class RunLogFileHandler(logging.FileHandler):
    """``log.txt`` of a run: appended to, UTF-8; after the first failed write or flush (``ENOSPC``,
    ``EFBIG``, an I/O error) the file is closed and every later record is dropped, with one line on
    stderr saying why. Opening the file is checked at once: a ``log.txt`` that cannot be opened (a
    directory of that name, a read-only run directory) is a :class:`~noether_core.errors.UsageError`."""

    def __init__(self, path: Path | str) -> None:
        try:
            super().__init__(path, mode="a", encoding="utf-8")
        except OSError as error:
            raise UsageError(
                f"cannot open the run's log file {str(path)!r}: {error.strerror or error}"
            ) from None
        self.failed: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is not None:
            return
        try:
            # FileHandler.emit reopens a closed stream outside its own error handling: guard it all
            super().emit(record)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        self._give_up(error if error is not None else OSError("unknown error"))

    def flush(self) -> None:
        if self.failed is not None:
            return
        try:
            super().flush()
        except Exception as error:
            self._give_up(error)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            super().close()

    def _give_up(self, error: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = error
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # flushes what is buffered once more; that may fail again
        reason = getattr(error, "strerror", None) or f"{type(error).__name__}: {error}"
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"noether: cannot write {self.baseFilename} ({reason}); the run goes on without its log "
                "file\n"
            )
            sys.stderr.flush()


__all__ = ["RunLogFileHandler"]
