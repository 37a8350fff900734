"""Settings every service reads, and the factories that turn them into adapters.

Adapters are chosen here by configuration (``RETRAINER_*`` environment variables or ``.env``);
an adapter's SDK is imported only when that adapter is chosen. Nothing connects at import time:
a service builds its ``Settings`` in ``main()`` and calls these factories there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topology import build_topology

if TYPE_CHECKING:
    from shared.blobs.port import BlobStore
    from shared.bus.port import MessageBus
    from shared.tracking import ModelRegistry


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRAINER_", env_file=".env", extra="ignore")

    state_dir: Path = Path(".retrainer")

    bus: Literal["sqlite"] = "sqlite"
    bus_sqlite_path: Path | None = None
    bus_lock_duration_s: float = 60.0
    bus_max_delivery_count: int = 10
    # A stage hop costs about half this on the embedded bus (bench/bench_bus_hop.py).
    bus_poll_interval_s: float = 0.02

    blob: Literal["local"] = "local"
    blob_local_root: Path | None = None

    mlflow_tracking_uri: str | None = None
    mlflow_artifact_root: Path | None = None

    # Recorded on every model version as lineage (e.g. the image tag or git commit).
    code_version: str = "dev"

    # Modules imported for their recipes in addition to the ``retrainer.recipes`` entry points.
    recipe_modules: list[str] = []

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
    raise AssertionError(f"unhandled bus adapter {settings.bus!r}")


def create_blob_store(settings: CommonSettings) -> BlobStore:
    if settings.blob == "local":
        from shared.blobs.local import LocalBlobStore

        return LocalBlobStore(settings.resolved_blob_local_root)
    raise AssertionError(f"unhandled blob adapter {settings.blob!r}")


def create_registry(settings: CommonSettings) -> ModelRegistry:
    from shared.tracking import MlflowRegistry

    uri = settings.resolved_mlflow_tracking_uri
    remote = uri.startswith(("http://", "https://", "databricks", "azureml://"))
    return MlflowRegistry(
        uri, artifact_root=None if remote else settings.resolved_mlflow_artifact_root
    )
