"""One error root for the whole project.

Adapters translate SDK exceptions into these at their edge, so callers decide what to do
(retry, dead-letter, fail the run) from the type alone.
"""

from __future__ import annotations


class RetrainerError(Exception):
    """Root of every error this project raises on purpose."""


class RetryableError(RetrainerError):
    """The same call may succeed later (a timeout, a busy database, a dropped connection)."""


class PermanentError(RetrainerError):
    """Retrying the same call with the same input cannot succeed."""


class ConfigurationError(PermanentError):
    """A setting is missing or names something that does not exist."""


class MalformedMessageError(PermanentError):
    """A message body or its properties cannot be decoded into a known contract."""


class MessageLockLostError(PermanentError):
    """The peek-lock on a received message expired or the message was already settled."""


class BusUnavailableError(RetryableError):
    """The message bus could not be reached or was busy."""


class BlobStoreUnavailableError(RetryableError):
    """The blob store could not be reached, timed out or was busy (HTTP 408, 429, 5xx)."""


class BlobNotFoundError(PermanentError):
    def __init__(self, name: str) -> None:
        super().__init__(f"blob not found: {name!r}")
        self.name = name


class BlobExistsError(PermanentError):
    def __init__(self, name: str) -> None:
        super().__init__(f"blob already exists: {name!r}")
        self.name = name


class BlobConditionFailedError(PermanentError):
    """An etag-conditional write or delete found a different etag (HTTP 412)."""

    def __init__(self, name: str, expected_etag: str | None) -> None:
        super().__init__(f"blob {name!r} does not match etag {expected_etag!r}")
        self.name = name
        self.expected_etag = expected_etag


class BlobLeasedError(RetryableError):
    """Another holder's lease is active on the blob (HTTP 409 / 412): it cannot be leased,
    written or deleted until that lease is released or expires."""

    def __init__(self, name: str) -> None:
        super().__init__(f"blob {name!r} is leased by someone else")
        self.name = name


class BlobLeaseLostError(RetryableError):
    """A lease this caller held on the blob is gone: released, or expired and taken."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the lease on blob {name!r} is no longer held")
        self.name = name


class InvalidBlobNameError(PermanentError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid blob name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class UnknownRecipeError(PermanentError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown recipe {name!r}; known recipes: {', '.join(sorted(known)) or 'none'}"
        )
        self.name = name
        self.known = known


class DataValidationError(PermanentError):
    """Input data is unusable; names the file (and row) so a person can fix it."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}" + (f", row {row}" if row is not None else "") + ": "
        super().__init__(where + message)
        self.file = file
        self.row = row


class StageCancelledError(PermanentError):
    """The run was cancelled while its stage was working; the stage stopped at a checkpoint."""

    def __init__(self, message: str = "stage cancelled") -> None:
        super().__init__(message)
