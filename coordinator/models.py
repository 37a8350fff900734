"""Models for the API: a model's champion, and an operator's promote or rollback.

A manual change takes the path the tag stage takes (``shared.promotion.change_champion``,
under the model's promotion lease), so it never interleaves with a tag worker's promotion; it
records who, when and why on the version and emits a run-free ``ModelPromoted`` event
(trigger ``manual``) as the audit entry. A rollback is a promote of an earlier version; the
tag stages that follow compare their candidates with it.

The registry client (MLflow) is built at the first call: importing MLflow costs seconds, and
most coordinators never promote by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.telemetry import record_manual_promotion
from shared.blobs.port import BlobStore
from shared.errors import RetrainerError
from shared.promotion import ChampionChange, Promotion, PromotionOptions, change_champion
from shared.recipe import Recipe
from shared.tracking import ModelRegistry, ModelVersionNotFoundError, ModelVersionRecord


@dataclass(frozen=True)
class ManualPromotion:
    change: ChampionChange
    champion: ModelVersionRecord


class ModelChampions:
    def __init__(
        self,
        *,
        registry: Callable[[], ModelRegistry],
        blobs: BlobStore,
        recipes: Callable[[str], Recipe],
        options: PromotionOptions,
    ) -> None:
        self._make_registry = registry
        self._registry: ModelRegistry | None = None
        self._lock = threading.Lock()
        self._blobs = blobs
        self._recipes = recipes
        self._options = options

    def get_champion(self, name: str) -> ModelVersionRecord:
        """Raises ModelVersionNotFoundError when model ``name`` has no champion."""
        champion = self._registry_now().get_champion(name)
        if champion is None:
            raise ModelVersionNotFoundError(f"model {name!r} has no champion")
        return champion

    def promote(self, name: str, version: str, *, actor: str, reason: str) -> ManualPromotion:
        """Make ``version`` of model ``name`` its champion, whatever its metrics.

        Raises ModelVersionNotFoundError, or a RetryableError when the registry or the blob
        store is unavailable or the model's promotion lease stayed taken."""
        registry = self._registry_now()
        registry.get_model_version(name, version)  # no such version: nothing to lease
        change = change_champion(
            registry,
            self._blobs,
            name,
            version,
            lambda champion: Promotion(True, reason),
            actor=actor,
            options=self._options,
        )
        champion = registry.get_model_version(name, version)
        if change.previous_version != version:
            metric = self._primary_metric(champion)
            record_manual_promotion(
                change,
                entity=champion.tags.get("entity"),
                primary_metric=metric,
                value=champion.metric(metric) if metric else None,
            )
        return ManualPromotion(change, champion)

    def _primary_metric(self, version: ModelVersionRecord) -> str | None:
        try:
            return self._recipes(version.tags.get("recipe", "")).primary_metric
        except RetrainerError:  # a recipe this coordinator does not know (any more)
            return None

    def _registry_now(self) -> ModelRegistry:
        with self._lock:
            if self._registry is None:
                self._registry = self._make_registry()
            return self._registry
