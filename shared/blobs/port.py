"""The blob-store port.

A blob is addressed by a name ``container/path/to/blob``: the first segment is the container
(an Azure Blob Storage container, a top-level directory for the local adapter). Names are
validated the same way by every adapter (``validate_blob_name``) so a name that works locally
works on Azure and no name can escape the store's root.

Leases are Azure Blob Storage's: a lease on a blob lasts ``duration_s`` (15 to 60 s) from its
acquisition or latest renewal; while it is active nobody else can lease, write or delete the
blob (``BlobLeasedError``), and once it has expired anyone may lease the blob again. Writing
a blob one holds a lease on is not part of this port: a lease here guards something else (a
model's promotion, ``shared.promotion``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shared.errors import InvalidBlobNameError

_CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
MAX_NAME_LENGTH = 1024
# The lease durations Azure Blob Storage accepts (besides an infinite one, not offered here:
# a holder that dies would keep the blob leased until someone breaks the lease by hand).
MIN_LEASE_S = 15
MAX_LEASE_S = 60


@dataclass(frozen=True)
class BlobProperties:
    name: str
    etag: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class BlobContent:
    properties: BlobProperties
    data: bytes


class BlobStore(Protocol):
    def upload_blob(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = True,
        if_match: str | None = None,
    ) -> BlobProperties:
        """Write atomically: readers see the old or the new content, never a mix.

        ``overwrite=False`` raises BlobExistsError if the blob exists; ``if_match`` raises
        BlobConditionFailedError unless the current etag equals it."""

    def download_blob(self, name: str) -> BlobContent:
        """Raises BlobNotFoundError."""

    def get_blob_properties(self, name: str) -> BlobProperties:
        """Raises BlobNotFoundError."""

    def list_blobs(self, prefix: str) -> Iterator[BlobProperties]:
        """Blobs whose name starts with ``prefix`` (which starts with a container), by name."""

    def delete_blob(self, name: str, *, if_match: str | None = None) -> None:
        """Raises BlobNotFoundError, or BlobConditionFailedError on an etag mismatch."""

    def acquire_blob_lease(self, name: str, *, duration_s: int) -> str:
        """Lease the blob for ``duration_s`` seconds; returns the lease id.

        Raises BlobNotFoundError, or BlobLeasedError while another lease is active."""

    def renew_blob_lease(self, name: str, lease_id: str) -> None:
        """Start the lease's duration again. Raises BlobLeaseLostError unless ``lease_id``
        still holds the blob (a lease that expired is renewed if nobody leased it since)."""

    def release_blob_lease(self, name: str, lease_id: str) -> None:
        """End the lease at once; a blob that ``lease_id`` no longer holds is left alone."""


def split_blob_name(name: str) -> tuple[str, str]:
    """Validate ``name`` and return (container, path inside the container)."""
    validate_blob_name(name)
    container, _, path = name.partition("/")
    return container, path


def validate_blob_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidBlobNameError(str(name), "empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidBlobNameError(name[:64] + "...", f"longer than {MAX_NAME_LENGTH} characters")
    if "\\" in name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise InvalidBlobNameError(name, "contains a backslash or a control character")
    if name.startswith("/"):
        raise InvalidBlobNameError(name, "absolute paths are not blob names")
    container, sep, path = name.partition("/")
    if not _CONTAINER.match(container):
        raise InvalidBlobNameError(
            name, "container must be 3-63 lowercase letters, digits or single hyphens"
        )
    if not sep or not path:
        raise InvalidBlobNameError(name, "no blob path after the container")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidBlobNameError(name, "empty, '.' or '..' path segment")


def folder_prefix(name: str) -> str:
    """The listing prefix of the folder ``name``: ``data`` is read as ``data/``, so a string
    prefix of a folder's name (``data`` of ``database/``) never matches another folder."""
    return name if name.endswith("/") else name + "/"


def validate_prefix(prefix: str) -> tuple[str, str]:
    """A listing prefix: a container, optionally followed by ``/`` and a path start."""
    container, _, path = prefix.partition("/")
    if not _CONTAINER.match(container):
        raise InvalidBlobNameError(prefix, "prefix must start with a valid container name")
    if path:
        for segment in path.split("/")[:-1]:
            if segment in ("", ".", ".."):
                raise InvalidBlobNameError(prefix, "empty, '.' or '..' path segment")
        if path.split("/")[-1] in (".", ".."):
            raise InvalidBlobNameError(prefix, "'.' or '..' path segment")
    return container, path


def validate_lease_duration(duration_s: int) -> None:
    if (
        not isinstance(duration_s, int)
        or isinstance(duration_s, bool)
        or not MIN_LEASE_S <= duration_s <= MAX_LEASE_S
    ):
        raise ValueError(
            f"a lease lasts {MIN_LEASE_S} to {MAX_LEASE_S} seconds, not {duration_s!r}"
        )
