"""Settings every service reads, and the factories that turn them into adapters.

Adapters are chosen here by configuration (``RETRAINER_*`` environment variables or ``.env``);
an adapter's SDK is imported only when that adapter is chosen. Nothing connects at import time:
a service builds its ``Settings`` in ``main()`` and calls these factories there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError
from shared.topology import build_topology
from shared.triggers import TriggerRule

if TYPE_CHECKING:
    from shared.blobs.port import BlobStore
    from shared.bus.port import MessageBus
    from shared.tracking import ModelRegistry


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRAINER_", env_file=".env", extra="ignore")

    state_dir: Path = Path(".retrainer")

    bus: Literal["sqlite", "servicebus"] = "sqlite"
    bus_sqlite_path: Path | None = None
    # servicebus: a connection string, or a namespace reached with DefaultAzureCredential.
    servicebus_connection_string: str | None = None
    servicebus_namespace: str | None = None
    bus_lock_duration_s: float = 60.0
    bus_max_delivery_count: int = 10
    # A stage hop costs about half this on the embedded bus (bench/bench_bus_hop.py).
    bus_poll_interval_s: float = 0.02

    blob: Literal["local", "azure"] = "local"
    blob_local_root: Path | None = None
    # azure: a connection string, or an account URL reached with DefaultAzureCredential.
    blob_connection_string: str | None = None
    blob_account_url: str | None = None
    blob_max_concurrency: int = 32

    mlflow_tracking_uri: str | None = None
    mlflow_artifact_root: Path | None = None

    # Recorded on every model version as lineage (e.g. the image tag or git commit).
    code_version: str = "dev"

    # Modules imported for their recipes in addition to the ``retrainer.recipes`` entry points.
    recipe_modules: list[str] = []

    # Blob-upload triggers (shared/triggers.py): a JSON list of rules and/or a file holding
    # one; neither set: the built-in rules; "[]" turns them off.
    trigger_rules: list[TriggerRule] | None = None
    trigger_rules_file: Path | None = None
    # The local blob store sends a BlobCreated event to the blob-events topic for every write
    # of a blob that a trigger rule covers, as Event Grid does for Azure Storage.
    blob_events: bool = True

    # Telemetry (shared/telemetry.py): none | console | azure; unset: azure when an
    # Application Insights connection string is set, else none.
    telemetry_exporter: Literal["none", "console", "azure"] | None = None
    applicationinsights_connection_string: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "RETRAINER_APPLICATIONINSIGHTS_CONNECTION_STRING",
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
        ),
    )
    telemetry_live_metrics: bool = True
    # The distro's process/CPU/memory counters: most of the envelopes a quiet service sends.
    telemetry_performance_counters: bool = True
    # Telemetry that could not be sent is kept on disk and sent again later.
    telemetry_offline_storage: bool = True

    @property
    def resolved_bus_sqlite_path(self) -> Path:
        return self.bus_sqlite_path or self.state_dir / "bus.sqlite"

    @property
    def resolved_blob_local_root(self) -> Path:
        return self.blob_local_root or self.state_dir / "blobs"

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def resolved_mlflow_artifact_root(self) -> Path:
        return (self.mlflow_artifact_root or self.state_dir / "mlartifacts").resolve()


def create_bus(settings: CommonSettings) -> MessageBus:
    topology = build_topology(
        lock_duration_s=settings.bus_lock_duration_s,
        max_delivery_count=settings.bus_max_delivery_count,
    )
    if settings.bus == "sqlite":
        from shared.bus.sqlite import SqliteMessageBus

        return SqliteMessageBus(
            settings.resolved_bus_sqlite_path,
            topology=topology,
            poll_interval_s=settings.bus_poll_interval_s,
        )
    if settings.bus == "servicebus":
        from shared.bus.servicebus import ServiceBusMessageBus

        if settings.servicebus_connection_string:
            return ServiceBusMessageBus.from_connection_string(
                settings.servicebus_connection_string, topology=topology
            )
        if settings.servicebus_namespace:
            return ServiceBusMessageBus(settings.servicebus_namespace, topology=topology)
        raise ConfigurationError(
            "RETRAINER_BUS=servicebus needs RETRAINER_SERVICEBUS_CONNECTION_STRING or"
            " RETRAINER_SERVICEBUS_NAMESPACE"
        )
    raise AssertionError(f"unhandled bus adapter {settings.bus!r}")


def create_blob_store(settings: CommonSettings) -> BlobStore:
    if settings.blob == "local":
        from shared.blobs.local import LocalBlobStore
        from shared.triggers import blob_event_hook

        return LocalBlobStore(
            settings.resolved_blob_local_root, on_blob_created=blob_event_hook(settings)
        )
    if settings.blob == "azure":
        from shared.blobs.azure import AzureBlobStore

        if settings.blob_connection_string:
            return AzureBlobStore.from_connection_string(
                settings.blob_connection_string, max_concurrency=settings.blob_max_concurrency
            )
        if settings.blob_account_url:
            return AzureBlobStore(
                settings.blob_account_url, max_concurrency=settings.blob_max_concurrency
            )
        raise ConfigurationError(
            "RETRAINER_BLOB=azure needs RETRAINER_BLOB_CONNECTION_STRING or"
            " RETRAINER_BLOB_ACCOUNT_URL"
        )
    raise AssertionError(f"unhandled blob adapter {settings.blob!r}")


def create_registry(settings: CommonSettings) -> ModelRegistry:
    from shared.tracking import MlflowRegistry

    uri = settings.resolved_mlflow_tracking_uri
    remote = uri.startswith(("http://", "https://", "databricks", "azureml://"))
    return MlflowRegistry(
        uri, artifact_root=None if remote else settings.resolved_mlflow_artifact_root
    )
