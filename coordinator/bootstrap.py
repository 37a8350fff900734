"""Builds a ``Coordinator`` from settings: the one place that picks adapters and touches disk."""

from __future__ import annotations

from functools import partial

from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from recipes.registry import get_recipe, list_recipes
from shared.bootstrap import create_blob_store, create_bus


def build_coordinator(settings: CoordinatorSettings) -> Coordinator:
    """Create the state directory and the run store's tables, connect the adapters."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    extra_modules = tuple(settings.recipe_modules)
    # Discovering recipes imports their ML libraries (seconds): do it now rather than in the
    # first POST /runs, and fail at start-up on a recipe module that cannot be imported.
    list_recipes(extra_modules)
    store = RunStore.from_url(settings.resolved_database_url, schema=settings.database_schema)
    store.create_tables()
    return Coordinator(
        bus=create_bus(settings),
        blobs=create_blob_store(settings),
        store=store,
        recipes=partial(get_recipe, extra_modules=extra_modules),
        policy=settings.policy,
        triggers=settings.trigger_policy,
    )
