"""Data-asset versions as Azure ML data assets of type ``mltable``.

A version is ``azure.ai.ml.entities.Data(type=mltable)`` whose path is the datastore URI of the
split's training table (``azureml://datastores/<ds>/paths/<split path>/train/``), tagged with the
split's blob prefix and the run that registered it. AutoML jobs take it as their training data
(``azureml:<name>:<version>``), and the workspace's UI shows which data a model was trained on.

Numbering is Azure ML's own (``create_or_update`` without a version takes the container's next
version); a registration is idempotent per prefix (a version tagged with the prefix is
returned), and one that collides with a concurrent registration of the same number (HTTP 409,
or the service's "cannot change the asset path") tries again with the next number.

azure-ai-ml is imported by this module only (and only when ``RETRAINER_DATA_ASSETS`` is, or
resolves to, ``azureml``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import Data
from azure.ai.ml.exceptions import MlException
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.blobs.port import folder_prefix, validate_prefix
from shared.data_assets.port import (
    LATEST,
    TRAIN_TABLE,
    DataAssetNotFoundError,
    DataAssetRequestError,
    DataAssetUnavailableError,
    DataAssetVersion,
    InvalidDataAssetError,
    validate_asset_name,
    validate_version,
)
from shared.errors import InvalidBlobNameError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

# Tags on every version this adapter registers.
PREFIX_TAG = "retrainer_prefix"
RUN_TAG = "retrainer_correlation_id"
# The blob container the datastore maps (shared.worker.ARTIFACTS_CONTAINER).
DATASTORE_CONTAINER = "artifacts"
MAX_TRIES = 5


def datastore_uri(datastore: str, blob_prefix: str) -> str:
    """``artifacts/cache/split/<k>/`` -> ``azureml://datastores/<ds>/paths/cache/split/<k>/``."""
    container, path = validate_prefix(blob_prefix)
    if container != DATASTORE_CONTAINER:
        raise InvalidDataAssetError(
            f"{blob_prefix!r} is not in the {DATASTORE_CONTAINER!r} container that the Azure ML"
            f" datastore {datastore!r} maps"
        )
    return f"azureml://datastores/{datastore}/paths/{path}"


class AzureMLDataAssets:
    def __init__(self, ml_client: MLClient, *, datastore: str) -> None:
        self._ml_client = ml_client
        self._datastore = datastore

    def register(self, name: str, prefix: str, *, correlation_id: str) -> DataAssetVersion:
        validate_asset_name(name)
        try:
            validate_prefix(prefix)
        except InvalidBlobNameError as exc:
            raise InvalidDataAssetError(f"data asset prefix: {exc}") from None
        prefix = folder_prefix(prefix)
        path = datastore_uri(self._datastore, f"{prefix}{TRAIN_TABLE}/")
        for _ in range(MAX_TRIES):
            existing = self._find(name, prefix)
            if existing is not None:
                return existing
            data = Data(
                name=name,
                type=AssetTypes.MLTABLE,
                path=path,
                description=f"retrainer: the split of run {correlation_id}",
                tags={PREFIX_TAG: prefix, RUN_TAG: correlation_id},
            )
            try:
                with _translated(name):
                    created = self._ml_client.data.create_or_update(data)
            except _Collision:
                continue  # a concurrent registration took the number: look again
            return _version_of(created)
        raise DataAssetUnavailableError(
            f"data asset {name!r}: registration collided {MAX_TRIES} times"
        )

    def get(self, name: str, version: str = LATEST) -> DataAssetVersion:
        validate_asset_name(name)
        validate_version(version)
        try:
            with _translated(name):
                if version == LATEST:
                    data = self._ml_client.data.get(name, label=LATEST)
                else:
                    data = self._ml_client.data.get(name, version=version)
        except _NotFound:
            raise DataAssetNotFoundError(name, version) from None
        found = _version_of(data)
        if not found.prefix:
            raise DataAssetRequestError(
                f"data asset {name!r} version {found.version} was not registered by retrainer"
                f" (no {PREFIX_TAG} tag): it names no split to train on"
            )
        return found

    def list_versions(self, name: str) -> list[DataAssetVersion]:
        validate_asset_name(name)
        try:
            with _translated(name):
                found = [_version_of(data) for data in self._ml_client.data.list(name=name)]
        except _NotFound:
            return []
        return sorted(found, key=lambda v: int(v.version) if v.version.isdigit() else 0)

    def prefixes(self) -> set[str]:
        kept: set[str] = set()
        with _translated("*"):
            names = [str(container.name) for container in self._ml_client.data.list()]
        for name in names:
            for version in self.list_versions(name):
                if version.prefix:
                    kept.add(version.prefix)
        return kept

    def _find(self, name: str, prefix: str) -> DataAssetVersion | None:
        for version in self.list_versions(name):
            if version.prefix == prefix:
                return version
        return None


def _version_of(data: Any) -> DataAssetVersion:
    tags = {str(k): str(v) for k, v in (getattr(data, "tags", None) or {}).items()}
    created = getattr(getattr(data, "creation_context", None), "created_at", None)
    return DataAssetVersion(
        name=str(data.name),
        version=str(data.version),
        prefix=tags.get(PREFIX_TAG, ""),
        path=str(data.path),
        correlation_id=tags.get(RUN_TAG, ""),
        created_at="" if created is None else str(created),
        tags=tags,
    )


class _NotFound(Exception):
    pass


class _Collision(Exception):
    pass


def _causes(error: BaseException) -> list[BaseException]:
    """What the SDK wrapped: its exceptions nest the HTTP error a few levels down."""
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(found) < 8 and current not in found:
        found.append(current)
        current = (
            getattr(current, "inner_exception", None) or current.__cause__ or current.__context__
        )
    return found


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain(error: BaseException) -> str:
    """The SDK colours its messages for terminals; error texts travel in events and logs."""
    return " ".join(_ANSI_ESCAPE.sub("", str(error)).split())


@contextmanager
def _translated(name: str) -> Iterator[None]:
    """azure-core / azure-ai-ml exceptions -> the port's errors (a 404 and a version collision
    are left to the caller as ``_NotFound`` / ``_Collision``)."""
    try:
        yield
    except ResourceNotFoundError:
        raise _NotFound() from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise DataAssetUnavailableError(f"Azure ML unreachable: {exc}") from exc
    except HttpResponseError as exc:
        code = exc.status_code or 0
        if code == 409:
            raise _Collision() from exc
        if code in (408, 429) or code >= 500:
            raise DataAssetUnavailableError(
                f"Azure ML busy (HTTP {code}) on data asset {name!r}: {exc.message}"
            ) from exc
        raise DataAssetRequestError(
            f"Azure ML refused data asset {name!r} (HTTP {code}): {exc.message}"
        ) from exc
    except MlException as exc:
        if type(exc).__name__ == "AssetPathException":
            raise _Collision() from exc
        causes = _causes(exc)
        if any(isinstance(cause, ResourceNotFoundError) for cause in causes):
            raise _NotFound() from None
        transient = ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError
        if any(isinstance(cause, transient) for cause in causes):
            raise DataAssetUnavailableError(f"Azure ML call failed: {_plain(exc)}") from exc
        raise DataAssetRequestError(f"invalid Azure ML data asset {name!r}: {_plain(exc)}") from exc
    except AzureError as exc:
        raise DataAssetUnavailableError(f"Azure ML call failed: {exc}") from exc
