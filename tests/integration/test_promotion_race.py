"""One champion, always the best, however many tag workers promote at once (issue 16).

Runs of one model go through the real coordinator and stage workers (the echo recipe's
aggregation and split, a train stage that only records the run's score, the real register and
tag stages) on the embedded bus with the local blob store, and on the Service Bus adapter
(test broker) with the Azure blob adapter (Azurite), against one MLflow registry on SQLite.

The race is forced, not hoped for: ``Interleaving`` holds every tag stage right after it has
read the champion until every tag worker is held there or waits for the model's promotion
lease (or no other tag stage can come), so tag stages that are not serialised all read the
same champion before any of them writes.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from mlflow import MlflowClient

from coordinator.domain import Policy, Run
from coordinator.groups import MemberRequest
from coordinator.service import BackgroundLoops, Coordinator, GroupRequest, LoopIntervals
from coordinator.store import RunStore
from recipes.base import Recipe
from services.aggregation import build_spec as aggregation_spec
from services.register import make_handler as register_handler
from services.split import build_spec as split_spec
from services.tag import make_handler as tag_handler
from services.train import TRAINING_RECORD
from shared.blobs.port import BlobStore
from shared.bus.port import MessageBus
from shared.errors import BlobLeasedError, PermanentError
from shared.promotion import PromotionOptions
from shared.topology import Topology, build_topology
from shared.tracking import BEST_MODEL_TAG, CHAMPION_ALIAS, MlflowRegistry, ModelVersionRecord
from shared.worker import StageContext, StageResult, StageSpec, Worker
from tests.recipe_fixtures import EchoParams, echo_recipe, only

# Long: no worker dies here, and on a loaded machine a first send (an AMQP connection) may
# take seconds before the lock renewer starts.
LOCK_S = 30.0
MAX_ATTEMPTS = 3
# Generous: a safety net for a broken forcing, never a limit a loaded machine should reach.
PARK_TIMEOUT_S = 120.0
RUNS_TIMEOUT_S = 300.0
# Waiters ask for the lease often, so that a batch does not wait on the pauses.
PROMOTION = PromotionOptions(lease_s=15, wait_s=RUNS_TIMEOUT_S, poll_s=0.01, max_poll_s=0.05)


class Interleaving:
    """Holds each tag stage after its champion read until ``min(workers, stages left)`` tag
    stages are held or waiting for the promotion lease, then lets that group go together."""

    def __init__(self, *, workers: int, stages: int) -> None:
        self._workers = workers
        self._left = stages
        self._cond = threading.Condition()
        self._held = 0
        self._generation = 0
        self._lease_waiters: set[int] = set()
        self.groups: list[int] = []
        self.timeouts = 0

    def expect(self, stages: int) -> None:
        with self._cond:
            self._left += stages

    def after_champion_read(self) -> None:
        with self._cond:
            generation = self._generation
            self._held += 1
            self._release_if_ready()
            if not self._cond.wait_for(
                lambda: self._generation != generation, timeout=PARK_TIMEOUT_S
            ):
                self.timeouts += 1
                self._held -= 1

    def waiting_for_lease(self, waiting: bool) -> None:
        with self._cond:
            if waiting:
                self._lease_waiters.add(threading.get_ident())
            else:
                self._lease_waiters.discard(threading.get_ident())
            self._release_if_ready()

    def stage_finished(self) -> None:
        with self._cond:
            self._left -= 1
            self._lease_waiters.discard(threading.get_ident())
            self._release_if_ready()

    def _release_if_ready(self) -> None:
        if self._held and self._held + len(self._lease_waiters) >= min(self._workers, self._left):
            self.groups.append(self._held)
            self._held = 0
            self._generation += 1
            self._cond.notify_all()


class HeldAfterChampionRead:
    """The registry a tag worker uses, held by the interleaving after each champion read."""

    def __init__(self, inner: MlflowRegistry, interleaving: Interleaving) -> None:
        self._inner = inner
        self._interleaving = interleaving

    def get_champion(self, name: str) -> ModelVersionRecord | None:
        champion = self._inner.get_champion(name)
        self._interleaving.after_champion_read()
        return champion

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LeaseWatch:
    """The blob store a tag worker uses; tells the interleaving who waits for a lease."""

    def __init__(self, inner: BlobStore, interleaving: Interleaving) -> None:
        self._inner = inner
        self._interleaving = interleaving

    def acquire_blob_lease(self, name: str, *, duration_s: int) -> str:
        try:
            lease = self._inner.acquire_blob_lease(name, duration_s=duration_s)
        except BlobLeasedError:
            self._interleaving.waiting_for_lease(True)
            raise
        self._interleaving.waiting_for_lease(False)
        return lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def counted(handler: Callable[[StageContext], StageResult], interleaving: Interleaving) -> Any:
    def run(ctx: StageContext) -> StageResult:
        try:
            result = handler(ctx)
        except Exception as exc:
            if isinstance(exc, PermanentError) or ctx.command.attempt >= MAX_ATTEMPTS:
                interleaving.stage_finished()  # no further attempt will come
            raise
        interleaving.stage_finished()
        return result

    return run


@dataclass
class Adapters:
    bus: Callable[[Topology], MessageBus]
    blobs: Callable[[], BlobStore]


class Deployment:
    """A coordinator, one worker per stage before tag and ``tag_workers`` tag workers."""

    def __init__(
        self, root: Path, adapters: Adapters, *, tracking_uri: str, tag_workers: int
    ) -> None:
        self.root = root
        self.recipe: Recipe = dataclasses.replace(echo_recipe, name=f"echo-{uuid.uuid4().hex[:8]}")
        self.tracking_uri = tracking_uri
        self.mlflow = MlflowClient(self.tracking_uri)
        self.interleaving = Interleaving(workers=tag_workers, stages=0)
        self._experiment_id = self.mlflow.create_experiment(
            self.recipe.name, artifact_location=(root / "mlartifacts").as_uri()
        )
        self._stack = ExitStack()
        topology = build_topology(lock_duration_s=LOCK_S)
        self.blobs = adapters.blobs()
        self.data = f"datasets/race-{uuid.uuid4().hex}"
        self.blobs.upload_blob(f"{self.data}/a.txt", b"1\n2\n")
        store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
        store.create_tables()
        self.coordinator = Coordinator(
            bus=adapters.bus(topology),
            blobs=self.blobs,
            store=store,
            recipes=only(self.recipe),
            policy=Policy(max_attempts=MAX_ATTEMPTS, backoff_base_s=0.05, backoff_max_s=0.2),
        )
        self._stack.callback(self.coordinator.close)
        loops = BackgroundLoops(
            self.coordinator,
            LoopIntervals(consumer_wait_s=0.2, relay_interval_s=0.2, watchdog_interval_s=0.5),
        )
        loops.start()
        self._stack.callback(loops.stop)

        registry = MlflowRegistry(self.tracking_uri, artifact_root=root / "mlartifacts")
        upstream_bus = adapters.bus(topology)
        self._stack.callback(upstream_bus.close)
        specs = [
            aggregation_spec(),
            split_spec(),
            StageSpec(stage="train", inputs=("split",), output="model", handler=self._train),
            StageSpec(
                stage="register",
                inputs=("model",),
                output="registration",
                handler=register_handler(registry, code_version="test"),
                cacheable=False,
            ),
        ]
        workers = [self._worker(spec, upstream_bus, self.blobs, 2) for spec in specs]
        for _ in range(tag_workers):
            bus = adapters.bus(topology)
            self._stack.callback(bus.close)
            tag_registry = HeldAfterChampionRead(
                MlflowRegistry(self.tracking_uri, artifact_root=root / "mlartifacts"),
                self.interleaving,
            )
            spec = StageSpec(
                stage="tag",
                inputs=("registration",),
                output="promotion",
                handler=counted(
                    tag_handler(cast(MlflowRegistry, tag_registry), options=PROMOTION),
                    self.interleaving,
                ),
                cacheable=False,
            )
            blobs = cast(BlobStore, LeaseWatch(self.blobs, self.interleaving))
            workers.append(self._worker(spec, bus, blobs, 1))
        threads = [threading.Thread(target=w.run_forever, daemon=True) for w in workers]
        for worker, thread in zip(workers, threads, strict=True):
            thread.start()
            self._stack.callback(thread.join)
            self._stack.callback(worker.stop)

    def _worker(
        self, spec: StageSpec, bus: MessageBus, blobs: BlobStore, concurrency: int
    ) -> Worker:
        return Worker(
            spec,
            bus=bus,
            blob_store=blobs,
            recipe_lookup=only(self.recipe),
            lock_duration_s=LOCK_S,
            max_concurrency=concurrency,
            receive_wait_s=0.2,
            work_dir=self.root,
        )

    def _train(self, ctx: StageContext) -> StageResult:
        """Only the score the run asked for: the race is in tagging, not in training."""
        assert isinstance(ctx.params, EchoParams)
        run = self.mlflow.create_run(self._experiment_id)
        metrics = {"score": ctx.params.scale}
        record = {
            "mlflow_run_id": run.info.run_id,
            "model_uri": f"runs:/{run.info.run_id}/model",
            "metrics": metrics,
        }
        (ctx.output_dir / TRAINING_RECORD).write_text(json.dumps(record))
        return StageResult(metrics=metrics)

    def start_runs(self, scores: list[float]) -> list[Run]:
        self.interleaving.expect(len(scores))
        return [
            self.coordinator.start_run(self.recipe.name, self.data, {"scale": score})
            for score in scores
        ]

    def wait(self, runs: list[Run]) -> list[Run]:
        """The runs once finished (or as they are after a generous safety timeout)."""
        deadline = time.monotonic() + RUNS_TIMEOUT_S
        pending = {run.id for run in runs}
        while pending and time.monotonic() < deadline:
            pending = {i for i in pending if not self.coordinator.get_run(i).is_finished}
            threading.Event().wait(0.05)
        return [self.coordinator.get_run(run.id) for run in runs]

    def start_groups(self, groups: list[dict[str, float]]) -> list[Run]:
        """Run groups at once, each with one member per entity (entity -> its score); their
        member runs."""
        self.interleaving.expect(sum(len(group) for group in groups))
        views = [
            self.coordinator.start_group(
                GroupRequest(
                    recipe=self.recipe.name,
                    members=[
                        MemberRequest(entity, self.data, {"scale": score})
                        for entity, score in group.items()
                    ],
                    concurrency=len(group),
                )
            )
            for group in groups
        ]
        return [run for view in views for _, _, run in view.members]

    def versions(self, model: str | None = None) -> list[ModelVersionRecord]:
        found = self.mlflow.search_model_versions(f"name = '{model or self.recipe.name}'")
        return [
            ModelVersionRecord(v.name, str(v.version), v.run_id, dict(v.tags))
            for v in sorted(found, key=lambda v: int(v.version))
        ]

    def champion_version(self, model: str | None = None) -> str | None:
        try:
            champion = self.mlflow.get_model_version_by_alias(
                model or self.recipe.name, CHAMPION_ALIAS
            )
        except Exception:
            return None
        return str(champion.version)

    def close(self) -> None:
        self._stack.close()


def best(versions: list[ModelVersionRecord]) -> str:
    """The best version that passed the gate (score >= 0); among equals the oldest."""
    passed = [v for v in versions if (v.metric("score") or -1.0) >= 0.0]
    top = max(v.metric("score") or 0.0 for v in passed)
    return min(
        (v for v in passed if v.metric("score") == top), key=lambda v: int(v.version)
    ).version


def check(deployment: Deployment, runs: list[Run], models: list[str] | None = None) -> list[str]:
    """What is wrong after a batch of runs (empty when all is well), for each of ``models``
    (default: the recipe's own model)."""
    problems = [
        f"run {run.id} (score {run.params['scale']}) {run.status}: "
        + (run.error or ", ".join(f"{s.stage} {s.status} #{s.attempt}" for s in run.stages))
        for run in runs
        if run.status != "succeeded"
    ]
    for model in models or [deployment.recipe.name]:
        versions = deployment.versions(model)
        flagged = [v.version for v in versions if v.tags.get(BEST_MODEL_TAG) == "true"]
        expected = best(versions)
        champion = deployment.champion_version(model)
        if flagged != [expected]:
            problems.append(
                f"{model}: best_model=true on versions {flagged}, expected only v{expected}"
            )
        if champion != expected:
            problems.append(f"{model}: champion is v{champion}, expected v{expected}")
    return problems


def scores(rng: random.Random, count: int) -> list[float]:
    """``count`` scores, one failing the gate, two sharing the top when there are enough."""
    if count <= 2:
        values = [round(rng.uniform(0.1, 0.9), 3) for _ in range(count)]
    else:
        values = [round(rng.uniform(0.1, 0.8), 3) for _ in range(count - 3)]
        values += [0.9, 0.9, -1.0]
    rng.shuffle(values)
    return values


def forcing_problems(deployment: Deployment, problems: list[str]) -> list[str]:
    if deployment.interleaving.timeouts:
        return [
            f"{deployment.interleaving.timeouts} tag stages were let go by the safety timeout"
            f" (held groups: {deployment.interleaving.groups})"
        ]
    if not problems:
        # The forcing did its job: concurrent stages were held together at least once, or
        # (serialised) each was let go while the others waited for the lease.
        assert deployment.interleaving.groups
    return []


def race(
    root: Path, adapters: Adapters, *, tracking_uri: str, tag_workers: int, seed: int
) -> list[str]:
    """2 runs at once, then 8 runs at once, of one model; the problems after each batch."""
    rng = random.Random(seed)
    deployment = Deployment(root, adapters, tracking_uri=tracking_uri, tag_workers=tag_workers)
    problems: list[str] = []
    try:
        for batch in (2, 8):
            runs = deployment.wait(deployment.start_runs(scores(rng, batch)))
            problems += [f"{batch} runs: {p}" for p in check(deployment, runs)]
        problems += forcing_problems(deployment, problems)
    finally:
        deployment.close()
    return problems


ENTITIES = ("north", "south", "east")


def group_race(root: Path, adapters: Adapters, *, tracking_uri: str, tag_workers: int) -> list[str]:
    """Four run groups at once over the same three entities: each entity's model gets four
    versions promoted concurrently (two tied at the top), the models of different entities
    side by side. Every version passes the gate, and more tag workers than entities means two
    stages of one model are held together before that model has a champion: unserialised,
    both promote."""
    assert tag_workers > len(ENTITIES)
    rng = random.Random(7)
    deployment = Deployment(root, adapters, tracking_uri=tracking_uri, tag_workers=tag_workers)
    per_entity = {entity: rng.sample([0.4, 0.7, 0.9, 0.9], 4) for entity in ENTITIES}
    groups = [{entity: per_entity[entity][i] for entity in ENTITIES} for i in range(4)]
    models = [deployment.recipe.registered_model_name(entity) for entity in ENTITIES]
    try:
        runs = deployment.wait(deployment.start_groups(groups))
        problems = check(deployment, runs, models)
        problems += forcing_problems(deployment, problems)
    finally:
        deployment.close()
    return problems


# --- adapters -------------------------------------------------------------------------------


@contextmanager
def embedded(root: Path) -> Iterator[Adapters]:
    from shared.blobs.local import LocalBlobStore
    from shared.bus.sqlite import SqliteMessageBus

    def bus(topology: Topology) -> MessageBus:
        return SqliteMessageBus(root / "bus.sqlite", topology=topology, poll_interval_s=0.01)

    yield Adapters(bus=bus, blobs=lambda: LocalBlobStore(root / "blobs"))


@contextmanager
def azure(azurite: str) -> Iterator[Adapters]:
    from shared.blobs.azure import AzureBlobStore
    from shared.bus.servicebus import ServiceBusMessageBus
    from tests.servicebus_broker import ServiceBusTestBroker

    topology = build_topology(lock_duration_s=LOCK_S)
    with ServiceBusTestBroker(topology) as broker, ExitStack() as stack:

        def bus(topology: Topology) -> MessageBus:
            made = ServiceBusMessageBus.from_connection_string(
                broker.connection_string, topology=topology
            )
            return made

        def blobs() -> BlobStore:
            store = AzureBlobStore.from_connection_string(azurite)
            stack.callback(store.close)
            return store

        yield Adapters(bus=bus, blobs=blobs)
    assert broker.errors == [], f"the test broker failed: {broker.errors!r}"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tracking database for the module (creating one costs seconds); every deployment
    has a model name of its own."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.mark.parametrize("tag_workers", [2, 4])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_champion_the_best_on_the_embedded_bus(
    tmp_path: Path, tracking_uri: str, tag_workers: int, seed: int
) -> None:
    with embedded(tmp_path) as adapters:
        problems = race(
            tmp_path, adapters, tracking_uri=tracking_uri, tag_workers=tag_workers, seed=seed
        )
    assert problems == []


def test_one_champion_the_best_per_entity_in_run_groups(tmp_path: Path, tracking_uri: str) -> None:
    with embedded(tmp_path) as adapters:
        problems = group_race(tmp_path, adapters, tracking_uri=tracking_uri, tag_workers=4)
    assert problems == []


@pytest.mark.parametrize("tag_workers", [2, 4])
def test_one_champion_the_best_on_service_bus(
    tmp_path: Path, azurite: str, tracking_uri: str, tag_workers: int
) -> None:
    with azure(azurite) as adapters:
        problems = race(
            tmp_path, adapters, tracking_uri=tracking_uri, tag_workers=tag_workers, seed=tag_workers
        )
    assert problems == []
