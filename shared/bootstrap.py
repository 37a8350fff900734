"""The composition root: the one place that turns settings into adapters.

Adapters are chosen by configuration (``shared/settings.py``); an adapter's SDK is imported
only when that adapter is chosen, and nothing connects at import time: a service builds its
settings in ``main()`` and calls these factories there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import ConfigurationError
from shared.events import BlobEventPublisher
from shared.promotion import PromotionOptions
from shared.settings import CommonSettings
from shared.topology import build_topology
from shared.triggers import covered, load_trigger_rules

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

    from shared.blobs.port import BlobStore
    from shared.bus.port import MessageBus
    from shared.data_assets.port import DataAssets
    from shared.tracking import ModelRegistry


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
                settings.servicebus_connection_string.get_secret_value(), topology=topology
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

        return LocalBlobStore(
            settings.resolved_blob_local_root, on_blob_created=create_blob_event_hook(settings)
        )
    if settings.blob == "azure":
        from shared.blobs.azure import AzureBlobStore

        if settings.blob_connection_string:
            return AzureBlobStore.from_connection_string(
                settings.blob_connection_string.get_secret_value(),
                max_concurrency=settings.blob_max_concurrency,
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


def create_blob_event_hook(settings: CommonSettings) -> BlobEventPublisher | None:
    """The local blob store's ``on_blob_created`` hook: it plays Event Grid, sending events
    for the blobs a trigger rule covers; None when blob events are off or there are no rules."""
    rules = load_trigger_rules(settings.trigger_rules, settings.trigger_rules_file)
    if not settings.blob_events or not rules:
        return None
    return BlobEventPublisher(
        lambda: create_bus(settings), wanted=lambda name: covered(name, rules)
    )


def create_registry(settings: CommonSettings) -> ModelRegistry:
    from shared.tracking import MlflowRegistry

    uri = settings.resolved_mlflow_tracking_uri
    remote = uri.startswith(("http://", "https://", "databricks", "azureml://"))
    return MlflowRegistry(
        uri, artifact_root=None if remote else settings.resolved_mlflow_artifact_root
    )


def create_promotion_options(settings: CommonSettings) -> PromotionOptions:
    return PromotionOptions(lease_s=settings.promotion_lease_s, wait_s=settings.promotion_wait_s)


def create_data_assets(settings: CommonSettings, blobs: BlobStore | None = None) -> DataAssets:
    """Data-asset versions (``RETRAINER_DATA_ASSETS``): records in ``blobs`` (default: the
    configured blob store), or Azure ML data assets in the configured workspace."""
    if settings.resolved_data_assets == "local":
        from shared.data_assets.local import LocalDataAssets

        return LocalDataAssets(blobs if blobs is not None else create_blob_store(settings))
    from shared.data_assets.port import LazyDataAssets

    # Checked now (a missing workspace is a configuration error at start-up); the SDK is
    # imported and the client built with the first call.
    _azureml_workspace(settings, purpose="azureml data assets")

    def build() -> DataAssets:
        from shared.data_assets.azureml import AzureMLDataAssets

        return AzureMLDataAssets(
            create_azureml_client(settings, purpose="azureml data assets"),
            datastore=settings.azureml_datastore,
        )

    return LazyDataAssets(build)


def create_azureml_client(settings: CommonSettings, *, purpose: str) -> MLClient:
    """An ``MLClient`` on the configured workspace with ``DefaultAzureCredential``."""
    subscription_id, resource_group, workspace_name = _azureml_workspace(settings, purpose=purpose)
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(DefaultAzureCredential(), subscription_id, resource_group, workspace_name)


def _azureml_workspace(settings: CommonSettings, *, purpose: str) -> tuple[str, str, str]:
    workspace = (
        settings.azureml_subscription_id,
        settings.azureml_resource_group,
        settings.azureml_workspace,
    )
    if not all(workspace):
        raise ConfigurationError(
            f"{purpose} need RETRAINER_AZUREML_SUBSCRIPTION_ID,"
            " RETRAINER_AZUREML_RESOURCE_GROUP and RETRAINER_AZUREML_WORKSPACE"
        )
    subscription_id, resource_group, workspace_name = (str(part) for part in workspace)
    return subscription_id, resource_group, workspace_name
