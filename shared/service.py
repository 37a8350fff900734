"""Starting a stage worker process: settings -> adapters -> Worker.

Building a worker is cheap by design: recipes import their ML libraries on the first call of a
stage function (``recipes.base.lazy``) and the MLflow registry imports MLflow on its first
call. Then, unless ``RETRAINER_WARM_UP=false``, the worker warms up before its first receive
(``StageSpec.warm_up``): the stage functions it runs and, for train/register/tag, MLflow and
its store, so the health file (and so ``retrainer up``'s readiness) means "ready for a run
without start-up costs". Stopping: SIGTERM ends ``Worker.run_forever``
(stages in flight abandoned, see ``shared/worker.py``), telemetry is flushed, and the process
exits without the interpreter's teardown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from pydantic import Field

from shared.bootstrap import create_blob_store, create_bus
from shared.healthcheck import serve_health
from shared.lifecycle import exit_now, stop_with_supervisor
from shared.messages import DEFAULT_HEARTBEAT_S
from shared.recipe import LazyFunction, Recipe
from shared.settings import CommonSettings
from shared.telemetry import configure_from_settings, shutdown_telemetry
from shared.worker import StageSpec, Worker


class WorkerSettings(CommonSettings):
    max_concurrency: int = 1
    # The longest a receive waits for a message; None: the bus's idle wait (20 s embedded,
    # where a stop interrupts it; 0.5 s on Service Bus, where it is how long a stop takes).
    receive_wait_s: float | None = Field(default=None, gt=0)
    work_dir: Path | None = None
    # Touched before and after every receive; the container healthcheck reads its age.
    health_file: Path | None = None
    # Also answer GET /healthz on this port (200 while the health file is fresh), for
    # platforms whose probes are HTTP only (Azure Container Apps).
    health_port: int | None = Field(default=None, ge=1, le=65535)
    health_max_age_s: float = Field(default=60.0, gt=0)
    log_level: str = "INFO"
    # After SIGTERM, how long a stage in flight may take to reach a checkpoint before its
    # message is abandoned (delivered again) and the process exits.
    shutdown_grace_s: float = 5.0
    # Import the stage's recipe functions and set up MLflow before reporting ready (the
    # first run then costs what any other does); false: on the first message instead.
    warm_up: bool = True
    # A WorkerHeartbeat to the coordinator this often: a stage whose workers are busy with a
    # backlog is not timed out, and one with no live worker is reported (0: none sent).
    heartbeat_s: float = Field(default=DEFAULT_HEARTBEAT_S, ge=0)

    @property
    def resolved_health_file(self) -> Path | None:
        if self.health_file is None and self.health_port is not None:
            return self.state_dir / "worker.alive"
        return self.health_file


SettingsT = TypeVar("SettingsT", bound=WorkerSettings)

# The Recipe attribute holding each recipe stage's function.
_STAGE_FUNCTIONS = {"aggregation": "aggregate", "split": "split", "train": "train"}


def recipe_warm_up(
    stage: str,
    modules: tuple[str, ...],
    *,
    include: Callable[[Recipe], bool] = lambda _recipe: True,
) -> Callable[[], None]:
    """A warm-up that imports ``stage``'s function of every recipe (``include`` filters)
    named lazily (``recipes.base.lazy``), i.e. the recipe's libraries."""

    def warm() -> None:
        from shared.recipe_registry import list_recipes

        for recipe in list_recipes(modules).values():
            function = getattr(recipe, _STAGE_FUNCTIONS[stage])
            if isinstance(function, LazyFunction) and include(recipe):
                function.resolve()

    warm.__qualname__ = f"recipe_warm_up[{stage}]"
    return warm


def build_worker(spec: StageSpec, settings: WorkerSettings) -> Worker:
    from shared.recipe_registry import get_recipe, list_recipes

    modules = tuple(settings.recipe_modules)
    # Cheap (a recipe's libraries load with its first stage), and a recipe module that cannot
    # be imported stops the worker now rather than failing every message.
    list_recipes(modules)
    warm: tuple[Callable[[], object], ...] = ()
    if settings.warm_up:
        if spec.stage in ("aggregation", "split"):
            warm = (recipe_warm_up(spec.stage, modules),)
        warm += spec.warm_up
    return Worker(
        dataclasses.replace(spec, warm_up=warm),
        bus=create_bus(settings),
        blob_store=create_blob_store(settings),
        recipe_lookup=lambda name: get_recipe(name, modules),
        lock_duration_s=settings.bus_lock_duration_s,
        max_concurrency=settings.max_concurrency,
        receive_wait_s=settings.receive_wait_s or settings.idle_receive_wait_s,
        work_dir=settings.work_dir,
        health_file=settings.resolved_health_file,
        shutdown_grace_s=settings.shutdown_grace_s,
        heartbeat_s=settings.heartbeat_s or None,
    )


def run_stage_service(
    build_spec: Callable[[SettingsT], StageSpec], settings_type: type[SettingsT]
) -> NoReturn:
    """A worker process's main: runs until SIGTERM/SIGINT, then exits the process."""
    settings = settings_type()
    stop_with_supervisor(settings.supervisor_pid)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    spec = build_spec(settings)
    # After basicConfig: the azure exporter adds its own handler to the root logger.
    configure_from_settings(spec.stage, settings)
    worker = build_worker(spec, settings)
    health = None
    if settings.health_port is not None and settings.resolved_health_file is not None:
        settings.resolved_health_file.parent.mkdir(parents=True, exist_ok=True)
        health = serve_health(
            settings.health_port, settings.resolved_health_file, settings.health_max_age_s
        )
    try:
        worker.run_forever()
    finally:
        if health is not None:
            health.shutdown()
        worker.close()
        # SIGTERM stops run_forever: what the last stages recorded is sent before exiting.
        shutdown_telemetry()
    exit_now(0)
