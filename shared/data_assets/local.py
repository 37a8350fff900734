"""Data-asset versions as records in the blob store (the embedded default).

``artifacts/data-assets/<name>/versions/<version, 10 digits>.json`` holds one version (its
prefix, who registered it, when); ``artifacts/data-assets/<name>/prefixes/<sha256>.json`` names
the version that points at a prefix, so registering the same prefix again returns it.

A new version is the newest + 1, written with ``overwrite=False``: of two registrations racing
for the same number one wins and the other takes the next number, so concurrent runs never lose
a version. Two registrations of the *same* prefix at the same moment may both get a version
(both valid, both pointing at the same data); the prefix record then names the first, which
every later registration of that prefix returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime

from shared.blobs.port import BlobStore, folder_prefix, validate_prefix
from shared.data_assets.port import (
    LATEST,
    DataAssetNotFoundError,
    DataAssetUnavailableError,
    DataAssetVersion,
    InvalidDataAssetError,
    validate_asset_name,
    validate_version,
)
from shared.errors import BlobExistsError, BlobNotFoundError, InvalidBlobNameError

ROOT = "artifacts/data-assets"
# How many numbers a registration tries before giving up (retryable): only a burst of
# concurrent registrations of one asset takes more than one.
MAX_TRIES = 20


def _digits(version: str) -> str:
    return f"{int(version):010d}"


class LocalDataAssets:
    def __init__(self, blobs: BlobStore, *, root: str = ROOT) -> None:
        self._blobs = blobs
        self._root = root.rstrip("/")

    def _versions_prefix(self, name: str) -> str:
        return f"{self._root}/{name}/versions/"

    def _prefix_record(self, name: str, prefix: str) -> str:
        digest = hashlib.sha256(prefix.encode()).hexdigest()
        return f"{self._root}/{name}/prefixes/{digest}.json"

    def register(self, name: str, prefix: str, *, correlation_id: str) -> DataAssetVersion:
        validate_asset_name(name)
        prefix = _validated_prefix(prefix)
        index = self._prefix_record(name, prefix)
        try:
            known = json.loads(self._blobs.download_blob(index).data)
        except BlobNotFoundError:
            known = None
        if known is not None:
            return self.get(name, str(known["version"]))
        for _ in range(MAX_TRIES):
            newest = self._newest(name)
            version = str(int(newest.version) + 1 if newest else 1)
            record = DataAssetVersion(
                name=name,
                version=version,
                prefix=prefix,
                path=prefix,
                correlation_id=correlation_id,
                created_at=datetime.now(UTC).isoformat(),
            )
            try:
                self._blobs.upload_blob(
                    f"{self._versions_prefix(name)}{_digits(version)}.json",
                    json.dumps(_to_json(record), sort_keys=True).encode(),
                    overwrite=False,
                )
            except BlobExistsError:
                continue  # another registration took this number: try the next
            # The same prefix registered meanwhile: the first version stays the one named.
            with contextlib.suppress(BlobExistsError):
                self._blobs.upload_blob(
                    index, json.dumps({"version": version}).encode(), overwrite=False
                )
            return record
        raise DataAssetUnavailableError(
            f"data asset {name!r}: no free version number after {MAX_TRIES} tries"
        )

    def get(self, name: str, version: str = LATEST) -> DataAssetVersion:
        validate_asset_name(name)
        validate_version(version)
        if version == LATEST:
            newest = self._newest(name)
            if newest is None:
                raise DataAssetNotFoundError(name)
            return newest
        try:
            content = self._blobs.download_blob(
                f"{self._versions_prefix(name)}{_digits(version)}.json"
            )
        except BlobNotFoundError:
            raise DataAssetNotFoundError(name, version) from None
        return _from_json(json.loads(content.data))

    def list_versions(self, name: str) -> list[DataAssetVersion]:
        validate_asset_name(name)
        found = []
        for blob in self._blobs.list_blobs(self._versions_prefix(name)):
            try:
                found.append(_from_json(json.loads(self._blobs.download_blob(blob.name).data)))
            except BlobNotFoundError:
                continue
        return sorted(found, key=lambda v: int(v.version))

    def prefixes(self) -> set[str]:
        kept = set()
        for blob in self._blobs.list_blobs(f"{self._root}/"):
            if "/versions/" not in blob.name:
                continue
            try:
                record = json.loads(self._blobs.download_blob(blob.name).data)
            except BlobNotFoundError:
                continue
            kept.add(str(record["prefix"]))
        return kept

    def _newest(self, name: str) -> DataAssetVersion | None:
        # Zero-padded names list in version order: the last one is the newest.
        newest = None
        for blob in self._blobs.list_blobs(self._versions_prefix(name)):
            newest = blob.name
        if newest is None:
            return None
        try:
            return _from_json(json.loads(self._blobs.download_blob(newest).data))
        except BlobNotFoundError:
            return None


def _validated_prefix(prefix: str) -> str:
    try:
        validate_prefix(prefix)
    except InvalidBlobNameError as exc:
        raise InvalidDataAssetError(f"data asset prefix: {exc}") from None
    return folder_prefix(prefix)


def _to_json(version: DataAssetVersion) -> dict[str, object]:
    return {
        "name": version.name,
        "version": version.version,
        "prefix": version.prefix,
        "path": version.path,
        "correlation_id": version.correlation_id,
        "created_at": version.created_at,
        "tags": dict(version.tags),
    }


def _from_json(record: dict[str, object]) -> DataAssetVersion:
    tags = record.get("tags") or {}
    assert isinstance(tags, dict)
    return DataAssetVersion(
        name=str(record["name"]),
        version=str(record["version"]),
        prefix=str(record["prefix"]),
        path=str(record["path"]),
        correlation_id=str(record.get("correlation_id", "")),
        created_at=str(record.get("created_at", "")),
        tags={str(k): str(v) for k, v in tags.items()},
    )
