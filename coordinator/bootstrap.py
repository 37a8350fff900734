"""Builds a ``Coordinator`` from settings: the one place that picks adapters and touches disk."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from coordinator.models import ModelChampions
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blob_poller import BlobChangePoller
from shared.blobs.port import BlobStore
from shared.bootstrap import (
    create_blob_store,
    create_bus,
    create_data_assets,
    create_promotion_options,
    create_registry,
)
from shared.errors import ConfigurationError
from shared.recipe_registry import get_recipe, list_recipes


def build_coordinator(settings: CoordinatorSettings) -> Coordinator:
    """Create the state directory and the run store's tables, connect the adapters."""
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"state directory {settings.state_dir.resolve()}: {exc.strerror or exc}"
        ) from exc
    extra_modules = tuple(settings.recipe_modules)
    # Cheap (recipes load their ML libraries with their first stage): fails the start-up on a
    # recipe module that cannot be imported, rather than the first POST /runs.
    list_recipes(extra_modules)
    store = RunStore.from_url(
        settings.resolved_database_url,
        schema=settings.database_schema,
        password=entra_database_password() if settings.database_entra_auth else None,
    )
    store.create_tables()
    blobs = create_blob_store(settings)
    return Coordinator(
        bus=create_bus(settings),
        blobs=blobs,
        store=store,
        recipes=partial(get_recipe, extra_modules=extra_modules),
        policy=settings.policy,
        triggers=settings.trigger_policy,
        groups=settings.group_policy,
        min_free_disk_bytes=settings.min_free_disk_bytes,
        retention=settings.retention_policy,
        store_retention=settings.store_retention,
        data_assets=create_data_assets(settings, blobs),
    )


def build_blob_poller(
    settings: CoordinatorSettings, coordinator: Coordinator
) -> BlobChangePoller | None:
    """The blob-change poller over the coordinator's blob store and bus, watching the trigger
    rules' prefixes; None unless ``RETRAINER_BLOB_POLLER`` is on (and a rule exists)."""
    rules = settings.trigger_policy.rules
    if not settings.blob_poller or not rules:
        return None
    return BlobChangePoller(
        coordinator.blobs,
        coordinator.bus,
        watches=[(rule.container, rule.prefix) for rule in rules],
        lookback_s=settings.blob_poller_lookback_s,
        start=settings.blob_poller_start,
    )


def build_champions(settings: CoordinatorSettings, blobs: BlobStore) -> ModelChampions:
    """Manual promotions through ``blobs`` (the coordinator's store: the promotion leases live
    there); the registry client is made at the first call."""
    return ModelChampions(
        registry=partial(create_registry, settings),
        blobs=blobs,
        recipes=partial(get_recipe, extra_modules=tuple(settings.recipe_modules)),
        options=create_promotion_options(settings),
    )


# Azure Database for PostgreSQL takes an Entra ID access token for this scope as the password.
POSTGRES_ENTRA_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


def entra_database_password() -> Callable[[], str]:
    """A fresh access token per connection (the credential caches it until near expiry)."""
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    return lambda: credential.get_token(POSTGRES_ENTRA_SCOPE).token
