"""Settings every service reads (``RETRAINER_*`` environment variables or ``.env``).

This module only reads configuration; ``shared/bootstrap.py`` turns it into adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.triggers import TriggerRule

# Where a recipe of each ``compute`` (cpu|gpu) trains (services/train/settings.py).
ComputeMode = Literal["in_process", "subprocess", "azureml"]


# Receive waits when nothing arrives (CommonSettings.idle_receive_wait_s). A worker touches its
# health file after each receive: the embedded wait stays well inside its 60 s health age.
EMBEDDED_IDLE_RECEIVE_WAIT_S = 20.0
SERVICEBUS_RECEIVE_WAIT_S = 0.5


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRAINER_", env_file=".env", extra="ignore")

    state_dir: Path = Path(".retrainer")
    # The process that started this one (``retrainer up``): when it is gone, this one stops.
    supervisor_pid: int | None = None

    bus: Literal["sqlite", "servicebus"] = "sqlite"
    bus_sqlite_path: Path | None = None
    # servicebus: a connection string, or a namespace reached with DefaultAzureCredential.
    # Connection strings and keys are SecretStr: they never show in a repr, a log or an error.
    servicebus_connection_string: SecretStr | None = None
    servicebus_namespace: str | None = None
    bus_lock_duration_s: float = 60.0
    bus_max_delivery_count: int = 10
    # A stage hop costs about half this on the embedded bus (bench/bench_bus_hop.py).
    bus_poll_interval_s: float = 0.02

    @property
    def idle_receive_wait_s(self) -> float:
        """How long a receive loop waits when nothing arrives, unless a service's setting says.
        The embedded bus's waits cost nothing (a doorbell ends them) and a stop interrupts
        them; a Service Bus wait only ends by itself, so it stays short there for a quick stop.
        """
        return EMBEDDED_IDLE_RECEIVE_WAIT_S if self.bus == "sqlite" else SERVICEBUS_RECEIVE_WAIT_S

    blob: Literal["local", "azure"] = "local"
    blob_local_root: Path | None = None
    # azure: a connection string, or an account URL reached with DefaultAzureCredential.
    blob_connection_string: SecretStr | None = None
    blob_account_url: str | None = None
    blob_max_concurrency: int = 32

    mlflow_tracking_uri: str | None = None
    mlflow_artifact_root: Path | None = None

    # Promotion (shared/promotion.py): the model's promotion lease lasts this long unless
    # renewed (Azure allows 15-60 s), and a promotion waits this long for it.
    promotion_lease_s: int = Field(default=30, ge=15, le=60)
    promotion_wait_s: float = Field(default=300.0, ge=0)

    # Where recipes train, by their ``compute``: read by the train service, and by every service
    # that must know whether training happens on Azure ML (data assets below).
    compute_cpu: ComputeMode = "in_process"
    compute_gpu: ComputeMode = "subprocess"
    # The Azure ML workspace (training jobs, data assets), reached with DefaultAzureCredential.
    azureml_subscription_id: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    # The Azure ML datastore registered on the blob container ``artifacts``: jobs read the split
    # and write the model through it, and data assets point into it.
    azureml_datastore: str = "retrainer_artifacts"

    # Data-asset versions (shared/data_assets): ``local`` records in the blob store, or
    # ``azureml`` data assets (mltable) in the workspace above. Unset: ``azureml`` when a
    # compute above is azureml, else ``local``.
    data_assets: Literal["local", "azureml"] | None = None

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

    # Telemetry (shared/telemetry.py): none | console | azure | otlp (OTEL_EXPORTER_OTLP_*);
    # unset: azure when an Application Insights connection string is set, else none.
    telemetry_exporter: Literal["none", "console", "azure", "otlp"] | None = None
    applicationinsights_connection_string: SecretStr | None = Field(
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
    # Send to Application Insights with a Microsoft Entra token (DefaultAzureCredential: the
    # service's managed identity, Monitoring Metrics Publisher) rather than the connection
    # string's key: needed when the component disables local authentication.
    telemetry_entra_auth: bool = False

    @property
    def uses_azureml(self) -> bool:
        return "azureml" in (self.compute_cpu, self.compute_gpu)

    @property
    def resolved_data_assets(self) -> Literal["local", "azureml"]:
        if self.data_assets is not None:
            return self.data_assets
        return "azureml" if self.uses_azureml else "local"

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
