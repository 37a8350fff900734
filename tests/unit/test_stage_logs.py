"""Secrets in free text (a stage's error or log tail) are redacted; a log tail is bounded."""

from __future__ import annotations

import pytest

from shared.redaction import redact_text
from shared.stage_logs import MAX_LOG_TAIL_CHARS, TRUNCATED_MARK, failure_log, tail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET https://a.blob.core.windows.net/c/b?sv=2021&sig=abc%2Fdef&se=1 failed",
            "GET https://a.blob.core.windows.net/c/b?sv=2021&sig=REDACTED&se=1 failed",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=dev;AccountKey=Eby8vdM02x==;BlobEndpoint=x",
            "DefaultEndpointsProtocol=https;AccountName=dev;AccountKey=REDACTED;BlobEndpoint=x",
        ),
        ("Authorization: Bearer eyJhbGciOi.abc.def", "Authorization: REDACTED"),
        ("sent Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "sent Bearer REDACTED"),
        ('{"password": "hunter2", "user": "bob"}', '{"password": "REDACTED", "user": "bob"}'),
        ("postgresql://bob:s3cret@db:5432/x", "postgresql://bob:REDACTED@db:5432/x"),
        ("token=abc keyboard=3 monkey=5", "token=REDACTED keyboard=3 monkey=5"),
        (
            "column 'temperature': could not convert 'hot'",
            "column 'temperature': could not convert 'hot'",
        ),
    ],
)
def test_secrets_in_text_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_long_log_keeps_its_end_from_a_line_start() -> None:
    text = "".join(f"line {i}\n" for i in range(10_000)) + "Boom: sig=topsecret\n"
    kept, cut = tail(text)
    assert cut and kept.startswith(TRUNCATED_MARK + "line ")
    assert len(kept) <= MAX_LOG_TAIL_CHARS + len(TRUNCATED_MARK)
    assert kept.endswith("Boom: sig=REDACTED\n") and "topsecret" not in kept
    assert tail("short\n") == ("short\n", False)


def test_the_failure_log_is_the_redacted_traceback() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise RuntimeError("upload to https://x/y?sig=abc failed") from exc
    except RuntimeError as exc:
        log = failure_log(exc)
    assert log.startswith("Traceback (most recent call last):")
    assert "KeyError: 'inner'" in log and "direct cause" in log
    assert log.rstrip().endswith("RuntimeError: upload to https://x/y?sig=REDACTED failed")
