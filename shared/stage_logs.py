"""A failed stage attempt's log tail: what a worker keeps beside the run's artifacts when an
attempt fails (the exception's traceback, bounded and with secrets redacted), and what the
coordinator serves back (``GET /runs/{id}/stages/{stage}/attempts/{n}/log``)."""

from __future__ import annotations

import traceback
from uuid import UUID

from shared.redaction import redact_text

# A log tail is at most this many characters (the end is kept: it holds the cause).
MAX_LOG_TAIL_CHARS = 16_000
TRUNCATED_MARK = "[... earlier lines cut ...]\n"


def failure_log_blob(run_id: UUID | str, stage: str, attempt: int) -> str:
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
