"""The data-asset port: named, numbered versions of the data a model was trained on.

After a run's split stage succeeds, the split worker registers the split output (an immutable,
content-addressed blob prefix) as the next version of the recipe's data asset
(``Recipe.data_asset``), the way Azure ML numbers its data assets: versions ``1``, ``2``, ...,
and ``latest`` for the newest. The model version's lineage names the asset and version, and a
run may train on an existing version (``POST /runs`` with ``data: "asset:<name>@<version>"``)
without aggregation and split.

Semantics every adapter keeps:

* ``register`` is idempotent per (name, prefix): registering a prefix that a version of the
  asset already points at returns that version (a redelivered or retried split, a cache hit on
  the same data), so a version always stands for distinct data;
* concurrent registrations of different prefixes get distinct versions (no lost writes);
* versions are never changed or deleted by the runtime (cache retention keeps their prefixes).

What a version points at: ``prefix`` is the split folder (``artifacts/cache/split/<key>/``),
which holds the training table under ``train/`` and, when the split made one, the validation
table under ``validation/`` (each an ``MLTable`` folder for the recipes that train on Azure ML
AutoML); ``path`` is where the asset itself points (the local record: the prefix; Azure ML: the
datastore URI of ``<prefix>train/``, an ``mltable`` asset).

Adapters: ``local.py`` (records in the blob store, the embedded default) and ``azureml.py``
(``azure-ai-ml`` data assets of type mltable, imported only when chosen).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shared.errors import PermanentError, RetryableError

# ``data`` of a run that trains on an existing version: ``asset:<name>@<version|latest>``.
ASSET_SCHEME = "asset:"
LATEST = "latest"
# The split's StageSucceeded details name the version it was registered as; a stage command's
# ``inputs`` carry it as ``name@version`` under INPUT (train, register read it).
DETAIL_NAME = "data_asset"
DETAIL_VERSION = "data_asset_version"
DETAIL_PATH = "data_asset_path"
INPUT = "data_asset"
# Inside a data-asset version's prefix (the split folder).
TRAIN_TABLE = "train"
VALIDATION_TABLE = "validation"
# Azure ML's rule for asset names (letters, digits, '-', '_', '.'; a letter or digit first).
MAX_ASSET_NAME_LENGTH = 255
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


@dataclass(frozen=True)
class DataAssetVersion:
    name: str
    version: str
    # The split folder the version stands for: a blob prefix ending in '/'.
    prefix: str
    # Where the asset points (local: the prefix; Azure ML: a datastore URI of the train table).
    path: str
    # The run that registered it.
    correlation_id: str = ""
    created_at: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """``asset:<name>@<version>``, what ``POST /runs`` takes to train on this version."""
        return f"{ASSET_SCHEME}{self.name}@{self.version}"


class DataAssets(Protocol):
    def register(self, name: str, prefix: str, *, correlation_id: str) -> DataAssetVersion:
        """The version of ``name`` that points at ``prefix``: an existing one, or a new one
        numbered after the newest. Raises InvalidDataAssetError, DataAssetUnavailableError."""
        ...

    def get(self, name: str, version: str = LATEST) -> DataAssetVersion:
        """Version ``version`` (digits) or ``latest``. Raises DataAssetNotFoundError."""
        ...

    def list_versions(self, name: str) -> list[DataAssetVersion]:
        """Every version of ``name``, oldest first (empty for an unknown name)."""
        ...

    def prefixes(self) -> set[str]:
        """The prefixes every version of every asset points at (cache retention keeps them)."""
        ...


class LazyDataAssets:
    """A ``DataAssets`` built by ``factory`` on its first use: the Azure ML adapter imports
    azure-ai-ml and builds a client, which a service should not pay for at start-up."""

    def __init__(self, factory: Callable[[], DataAssets]) -> None:
        self._factory = factory
        self._built: DataAssets | None = None
        self._lock = threading.Lock()

    def _assets(self) -> DataAssets:
        with self._lock:
            if self._built is None:
                self._built = self._factory()
            return self._built

    def register(self, name: str, prefix: str, *, correlation_id: str) -> DataAssetVersion:
        return self._assets().register(name, prefix, correlation_id=correlation_id)

    def get(self, name: str, version: str = LATEST) -> DataAssetVersion:
        return self._assets().get(name, version)

    def list_versions(self, name: str) -> list[DataAssetVersion]:
        return self._assets().list_versions(name)

    def prefixes(self) -> set[str]:
        return self._assets().prefixes()


class InvalidDataAssetError(PermanentError):
    """A bad asset name, version or reference."""


class DataAssetNotFoundError(PermanentError):
    def __init__(self, name: str, version: str = LATEST) -> None:
        what = (
            f"data asset {name!r} has no versions"
            if version == LATEST
            else (f"data asset {name!r} has no version {version}")
        )
        super().__init__(what)
        self.name = name
        self.version = version


class DataAssetUnavailableError(RetryableError):
    """The asset store could not be reached or was busy, or a registration kept colliding."""


class DataAssetRequestError(PermanentError):
    """The asset store refused the request (forbidden, invalid)."""


def validate_asset_name(name: str) -> str:
    if not name or len(name) > MAX_ASSET_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidDataAssetError(
            f"data asset name {name[:80]!r} is not valid: 1 to {MAX_ASSET_NAME_LENGTH} letters,"
            " digits, '-', '_' or '.', starting with a letter or digit"
        )
    return name


def validate_version(version: str) -> str:
    """``latest`` or a version number (1 to 10 digits, no leading zero)."""
    if version != LATEST and not _VERSION.fullmatch(version):
        raise InvalidDataAssetError(
            f"data asset version {version[:40]!r} is not 'latest' or a version number"
        )
    return version


def is_asset_reference(data: str) -> bool:
    return data.startswith(ASSET_SCHEME)


def parse_asset_reference(data: str) -> tuple[str, str]:
    """``asset:<name>@<version|latest>`` -> (name, version); ``@latest`` may be left out."""
    if not is_asset_reference(data):
        raise InvalidDataAssetError(f"{data[:80]!r} is not asset:<name>@<version|latest>")
    name, sep, version = data[len(ASSET_SCHEME) :].partition("@")
    return validate_asset_name(name), validate_version(version if sep else LATEST)
