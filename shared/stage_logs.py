"""A stage attempt's log tail: what a worker keeps beside the run's artifacts while an attempt
runs and when it ends (what the attempt's thread logged and, for a failure, the exception's
traceback; bounded, secrets redacted), and what the coordinator serves back
(``GET /runs/{id}/stages/{stage}/attempts/{n}/log``)."""

from __future__ import annotations

import collections
import logging
import threading
import traceback
from collections.abc import Callable
from types import TracebackType
from uuid import UUID

from shared.redaction import redact_text

# A log tail is at most this many characters (the end is kept: it holds the cause).
MAX_LOG_TAIL_CHARS = 16_000
TRUNCATED_MARK = "[... earlier lines cut ...]\n"


def failure_log_blob(run_id: UUID | str, stage: str, attempt: int) -> str:
    """Where an attempt's log is kept: written while it runs, and at its end (a failure's with
    its traceback)."""
    return f"artifacts/runs/{run_id}/logs/{stage}-attempt-{attempt}.log"


def tail(text: str, limit: int = MAX_LOG_TAIL_CHARS) -> tuple[str, bool]:
    """The last ``limit`` characters of ``text`` (from a line start where one is near), redacted,
    and whether anything was cut. Redaction runs before cutting, so a cut secret cannot leak
    through a pattern split at the edge."""
    text = redact_text(text)
    if len(text) <= limit:
        return text, False
    cut = text[-limit:]
    newline = cut.find("\n")
    if 0 <= newline < limit // 4:
        cut = cut[newline + 1 :]
    return TRUNCATED_MARK + cut, True


def failure_log(exc: BaseException) -> str:
    """The traceback of ``exc`` (with its causes), bounded and redacted."""
    text = "".join(traceback.format_exception(exc))
    return tail(text)[0]


class AttemptLog(logging.Handler):
    """What one attempt logs, written to its log blob (``upload``) every ``interval_s`` while
    new lines come, and once more by ``finish``: the dashboard's live tail of a running stage.

    Only the records of the thread that enters it are kept (a worker runs several attempts at
    once, each in its own thread); what a recipe's own threads or processes log is not. The
    writes are best effort: an attempt never fails for its log."""

    def __init__(self, upload: Callable[[bytes], object], *, interval_s: float) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._upload = upload
        self._interval_s = interval_s
        self._thread_id = threading.get_ident()
        # The end of what was logged: twice what is written, so redaction sees whole lines.
        self._lines: collections.deque[str] = collections.deque()
        self._chars = 0
        self._written = 0  # lines logged when the blob was last written
        self._logged = 0
        self._guard = threading.Lock()
        self._stopped = threading.Event()
        self._writer = threading.Thread(target=self._write_while_running, daemon=True)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread_id:
            return
        line = self.format(record) + "\n"
        with self._guard:
            self._lines.append(line)
            self._chars += len(line)
            self._logged += 1
            while self._chars > 2 * MAX_LOG_TAIL_CHARS and len(self._lines) > 1:
                self._chars -= len(self._lines.popleft())

    def __enter__(self) -> AttemptLog:
        self._thread_id = threading.get_ident()
        logging.getLogger().addHandler(self)
        self._writer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """No more lines kept, no more periodic writes (idempotent)."""
        logging.getLogger().removeHandler(self)
        self._stopped.set()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join()

    def finish(self, failure: BaseException | None = None) -> None:
        """Stop, and write the whole log once more, with ``failure``'s traceback at its end."""
        self.stop()
        self._write(failure_log(failure) if failure is not None else "", force=True)

    def _write_while_running(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._write("", force=False)

    def _write(self, extra: str, *, force: bool) -> None:
        with self._guard:
            if not force and self._logged == self._written:
                return
            text, self._written = "".join(self._lines), self._logged
        if not text and not extra:
            return
        try:
            self._upload(tail(text + extra)[0].encode("utf-8"))
        except Exception as error:
            # Not the attempt's thread (or no longer its handler): this does not loop back.
            logging.getLogger(__name__).warning("could not write an attempt's log: %s", error)
