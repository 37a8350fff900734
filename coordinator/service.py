"""The coordinator's glue: requests and bus events in, decisions stored, commands published.

No HTTP here. ``Coordinator`` turns each input into a call of the pure state machine through
the store's unit of work; ``BackgroundLoops`` runs the six loops that keep runs moving:

* consumer: stage events from ``stage-events/coordinator`` -> ``handle_bus_message``;
* relay: outbox -> bus, woken at once after every decision that produced commands;
* watchdog: overdue stages -> ``DeadlineExpired``;
* blob-events: ``Microsoft.Storage.BlobCreated`` events from ``blob-events/coordinator`` ->
  ``handle_blob_event_message`` (the webhook in ``coordinator/webhook.py`` is the other way in);
* triggers: pending bursts of uploads whose quiet window has passed -> runs;
* groups: run groups with a free slot -> their next waiting members admitted.

Blob triggers: each event is routed by the trigger rules (``shared/triggers.py``) and recorded
with its duplicate check and its pending burst in one transaction (``receive_blob_events``);
``fire_due_triggers`` later removes a due burst and starts its run in one transaction. So a
redelivered event or a crash between the two steps starts no second run and loses none.

Crash safety comes from the order of steps, not from care at run time: a decision and its
commands are committed together before anything is published or settled, the relay marks a
row published only after the bus accepted it (a re-publish is dropped by the bus's duplicate
detection, command ids being deterministic), and a message is completed only after its
decision is committed (a redelivery finds its id in the inbox and changes nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from pydantic import ValidationError

from coordinator.domain import (
    FINISHED_GROUP_STATUSES,
    AdmitRun,
    CancelRun,
    CoordinatorInput,
    DataAssetStart,
    Decision,
    GroupStatus,
    InvalidTransition,
    MemberSlot,
    NoLiveWorker,
    Policy,
    RetryRun,
    Run,
    RunGroup,
    RunNotFound,
    RunStatus,
    StartRun,
    WorkerSeen,
    admit,
    decide,
    no_live_worker,
)
from coordinator.groups import MemberRequest, Problem, check_members, members_of
from coordinator.retention import cache_entries, removable, remove_entry
from coordinator.schedules import Schedule, due_tick, latest_tick, next_tick
from coordinator.store import (
    Claim,
    OutboxMessage,
    PendingBurst,
    PromotionRecord,
    RunStore,
    ScheduleState,
    StageStart,
    TriggerHit,
)
from coordinator.telemetry import decision_span, record_decision
from shared.blob_poller import BlobChangePoller
from shared.blobs.port import BlobStore, folder_prefix, validate_prefix
from shared.blobs.transfer import holds_blobs
from shared.bus.consuming import MALFORMED_EVENT, MALFORMED_MESSAGE, dead_letter, handle_each
from shared.bus.port import MessageBus, ReceivedMessage
from shared.data_assets.port import (
    DataAssetNotFoundError,
    DataAssetRequestError,
    DataAssets,
    DataAssetVersion,
    InvalidDataAssetError,
    is_asset_reference,
    parse_asset_reference,
)
from shared.entities import InvalidEntityError
from shared.errors import (
    ConfigurationError,
    InvalidBlobNameError,
    MalformedMessageError,
    MessageLockLostError,
    PermanentError,
    RetrainerError,
    UnknownRecipeError,
)
from shared.events import (
    BlobCreated,
    IgnoredEvent,
    MalformedEventError,
    ParsedEvent,
    SubscriptionValidation,
    decode_events,
)
from shared.groups import CsvRows, GroupRule, SubPrefixes
from shared.messages import (
    DEFAULT_HEARTBEAT_S,
    STAGES,
    Stage,
    StageFailed,
    StageProgress,
    StageStarted,
    StageSucceeded,
    WorkerHeartbeat,
    decode,
    utcnow,
)
from shared.recipe import Recipe
from shared.topology import BLOB_EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, EVENTS_TOPIC
from shared.triggers import RESERVED_CONTAINERS, NoMatch, TriggerRule, route

log = logging.getLogger(__name__)

RecipeLookup = Callable[[str], Recipe]

# A worker whose heartbeats stopped for this many of its intervals is no longer live.
HEARTBEATS_MISSED = 3
# How long after its start the coordinator takes a stage it has heard no heartbeat from to have
# no live worker (its workers may be starting too).
HEARTBEAT_HORIZON_S = HEARTBEATS_MISSED * DEFAULT_HEARTBEAT_S + 1
# A timed loop sleeping until a deadline wakes this much after it (a timer firing a hair early
# would find nothing due and sleep again), and never sleeps less than WAKE_MIN_S.
WAKE_MARGIN_S = 0.01
WAKE_MIN_S = 0.01


class InvalidRunRequest(PermanentError):
    """A run request that names an unknown recipe, bad params or unusable data (HTTP 422)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class RetentionPolicy:
    # Cached stage outputs older than this that nothing needs are removed; None: never.
    max_age_s: float | None = 30 * 24 * 3600.0
    # How often the cache is checked.
    interval_s: float = 3600.0


@dataclass(frozen=True)
class StoreRetention:
    """What the run store keeps of its bookkeeping (``RunStore.prune``): published outbox rows,
    processed-message ids and the heartbeats of workers gone are deleted once older than
    ``horizon_s``, checked every ``interval_s``, after which a SQLite store's write-ahead log is
    checkpointed and truncated. The horizon is at least the bus's duplicate-detection window
    (settings check it): a message redelivered or re-sent within it must still be found in the
    inbox. Blob events seen are kept for ``TriggerPolicy.dedup_retention_s``."""

    horizon_s: float = 2 * 24 * 3600.0
    interval_s: float = 3600.0


@dataclass(frozen=True)
class GroupPolicy:
    # More members than this in one group is refused (RETRAINER_GROUP_MAX_MEMBERS).
    max_members: int = 1000
    # Members in a stage at once when the request does not say.
    default_concurrency: int = 4


@dataclass(frozen=True)
class GroupRequest:
    """A run group to start: its members given, or an expansion that lists them."""

    recipe: str
    params: Mapping[str, Any] = field(default_factory=dict)
    members: Sequence[MemberRequest] | None = None
    expand: SubPrefixes | CsvRows | None = None
    concurrency: int | None = None
    force: tuple[Stage, ...] = ()


@dataclass(frozen=True)
class ScheduleView:
    """A schedule, the latest tick it acted on (None: not seen by a coordinator yet) and the
    next one (UTC; in the past when it is due and fires at the next check)."""

    schedule: Schedule
    last_tick: datetime | None
    next_tick: datetime


@dataclass(frozen=True)
class GroupView:
    """A group, how many members are in each status, and (when asked for) the members:
    (position, entity, run), in member order."""

    group: RunGroup
    counts: dict[RunStatus, int]
    members: list[tuple[int, str, Run]] = field(default_factory=list)


class GroupTransitionError(PermanentError):
    """A group request that the group's state does not allow (HTTP 409)."""


class RunConflict(PermanentError):
    """A correlation id that names an existing run asked for something else (HTTP 409)."""

    def __init__(self, run_id: UUID, differences: list[str]) -> None:
        super().__init__(f"run {run_id} exists with a different request: {'; '.join(differences)}")
        self.run_id = run_id


def _resolved(found: DataAssetStart | str | None) -> DataAssetStart | None:
    return found if isinstance(found, DataAssetStart) else None


def _same_request(run: Run, start: StartRun) -> Run:
    """``run`` if ``start`` asks for exactly it; raises RunConflict naming the differences."""
    asked = {
        "recipe": start.recipe,
        "data": start.data,
        "params": dict(start.params),
        "entity": start.entity,
        "force": list(start.force),
    }
    has = {
        "recipe": run.recipe,
        "data": run.data,
        "params": run.params,
        "entity": run.entity,
        "force": list(run.force),
    }
    differences = [
        f"{key} is {has[key]!r}, not {asked[key]!r}" for key in asked if asked[key] != has[key]
    ]
    if differences:
        raise RunConflict(run.id, differences)
    return run


@dataclass(frozen=True)
class TriggerPolicy:
    rules: tuple[TriggerRule, ...] = ()
    # A burst of uploads starts its run once no upload arrived for this long...
    debounce_s: float = 5.0
    # ... or this long after its first upload, however many keep arriving.
    debounce_max_s: float = 300.0
    # Seen event ids and (blob, etag) pairs are forgotten after this long.
    dedup_retention_s: float = 7 * 24 * 3600.0
    # Cron schedules (coordinator/schedules.py), those of trigger rules included.
    schedules: tuple[Schedule, ...] = ()


@dataclass
class TriggerReport:
    """What became of one delivery of blob events."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    ignored: int = 0
    validations: list[SubscriptionValidation] = field(default_factory=list)


class Coordinator:
    def __init__(
        self,
        *,
        bus: MessageBus,
        blobs: BlobStore,
        store: RunStore,
        recipes: RecipeLookup,
        policy: Policy,
        triggers: TriggerPolicy | None = None,
        groups: GroupPolicy | None = None,
        retention: RetentionPolicy | None = None,
        store_retention: StoreRetention | None = None,
        clock: Callable[[], datetime] = utcnow,
        relay_batch_size: int = 100,
        min_free_disk_bytes: int = 0,
        data_assets: DataAssets | None = None,
        heartbeat_horizon_s: float = HEARTBEAT_HORIZON_S,
    ) -> None:
        self.bus = bus
        # Data-asset versions: runs on ``asset:<name>@<version>`` train on one; retention keeps
        # every version's prefix.
        self._data_assets = data_assets
        self.blobs = blobs
        self.store = store
        self._recipes = recipes
        self._policy = policy
        self._triggers = triggers or TriggerPolicy()
        self._groups = groups or GroupPolicy()
        self._retention = retention or RetentionPolicy()
        self._retained_at: float | None = None
        self._store_retention = store_retention or StoreRetention()
        self._store_pruned_at: float | None = None
        self._clock = clock
        # From then on a stage that sent no heartbeat at all is known to have no live worker.
        self._heartbeats_due_by = clock() + timedelta(seconds=heartbeat_horizon_s)
        self.relay_batch_size = relay_batch_size
        self._min_free_disk_bytes = min_free_disk_bytes
        # Set whenever a decision wrote commands, so the relay publishes them at once.
        self.outbox_written = threading.Event()
        # Set when a blob event changed the pending bursts, to wake the trigger loop.
        self.trigger_due = threading.Event()
        # Set when a decision wrote a deadline before the watchdog's next look (watchdog_at).
        self.watchdog_due = threading.Event()
        self.watchdog_at: datetime | None = None
        # Set when a group member finished or waits again, to wake the admission loop.
        self.admission_due = threading.Event()
        # The input and run the latest decision in this thread started from (for telemetry).
        self._decided = threading.local()
        # Per worker process, from the heartbeats this coordinator consumed since it started
        # (so not a stopped stack's): its stage, whether it was warming up, until when it counts.
        self._heard: dict[UUID, tuple[str, bool, datetime]] = {}
        self._heard_lock = threading.Lock()
        self._started_at = clock()
        self._check_trigger_rules()

    # --- requests --------------------------------------------------------------------------

    def start_run(
        self,
        recipe: str,
        data: str,
        params: Mapping[str, Any],
        *,
        trigger: str = "api",
        entity: str | None = None,
        force: Sequence[Stage] = (),
    ) -> Run:
        """Validate the request and start a run; raises InvalidRunRequest naming each problem."""
        run, _ = self.ensure_run(
            uuid4(), recipe, data, params, trigger=trigger, entity=entity, force=force
        )
        return run

    def ensure_run(
        self,
        run_id: UUID,
        recipe: str,
        data: str,
        params: Mapping[str, Any],
        *,
        trigger: str = "api",
        entity: str | None = None,
        force: Sequence[Stage] = (),
    ) -> tuple[Run, bool]:
        """Start run ``run_id`` unless it exists; returns the run and whether it is new.

        A caller-supplied correlation id makes the request idempotent: asking again with the
        same recipe, data, params, entity and force returns the existing run; asking with
        anything else raises RunConflict (HTTP 409). Raises InvalidRunRequest for a bad one."""
        start = StartRun(
            run_id, recipe, data, dict(params), trigger, entity=entity, force=tuple(force)
        )
        try:
            existing = self.store.get_run(run_id)
        except RunNotFound:
            pass
        else:
            return _same_request(existing, start), False
        asset = self._validate(recipe, data, params, entity=entity)
        run = self._apply(run_id, dataclasses.replace(start, data_asset=asset))
        _, previous = self._decided.start
        if previous is not None:
            # Another request with this id won the race; it must have asked the same.
            return _same_request(previous, start), False
        return run, True

    def cancel_run(self, run_id: UUID) -> Run:
        """Raises RunNotFound, or InvalidTransition if the run already finished."""
        return self._apply(run_id, CancelRun(run_id))

    def retry_run(self, run_id: UUID) -> Run:
        """Raises RunNotFound, or InvalidTransition unless the run failed or was cancelled."""
        return self._apply(run_id, RetryRun(run_id))

    def get_run(self, run_id: UUID) -> Run:
        return self.store.get_run(run_id)

    def promotions(self, model_name: str) -> list[PromotionRecord]:
        """The model's promotions as the coordinator saw them made, oldest first."""
        return self.store.list_promotions(model_name)

    def record_promotion(self, promotion: PromotionRecord) -> None:
        """An operator's promote or rollback (a run's tag stage records its own)."""
        self.store.record_promotion(promotion)

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        id_prefix: str | None = None,
        recipe: str | None = None,
        entity: str | None = None,
    ) -> tuple[list[Run], int]:
        """A page of runs, newest first, and how many runs match in all."""
        filters: dict[str, Any] = {
            "status": status,
            "id_prefix": id_prefix,
            "recipe": recipe,
            "entity": entity,
        }
        runs = self.store.list_runs(limit=limit, offset=offset, **filters)
        return runs, self.store.count_runs(**filters)

    # --- run groups ------------------------------------------------------------------------

    def start_group(
        self,
        request: GroupRequest,
        *,
        trigger: str = "api",
        trigger_details: Mapping[str, Any] | None = None,
    ) -> GroupView:
        """Check every member, create the group and its members (waiting) in one transaction,
        then admit the first ``concurrency``. Raises InvalidRunRequest naming each problem,
        having started nothing."""
        view = self._start_group(request, trigger, trigger_details)
        assert view is not None, "only a burst can lose a race"
        return view

    def _start_group(
        self,
        request: GroupRequest,
        trigger: str,
        trigger_details: Mapping[str, Any] | None,
        claim: Claim | None = None,
    ) -> GroupView | None:
        try:
            recipe = self._recipes(request.recipe)
        except UnknownRecipeError as exc:
            raise InvalidRunRequest([Problem(("recipe",), str(exc))]) from None
        members, problems = members_of(
            self.blobs, request.members, request.expand, max_members=self._groups.max_members
        )
        # Each reference resolved once for the whole group: members on "@latest" train on
        # the same version, whatever is registered while the group runs.
        assets: dict[str, DataAssetStart | str] = {}

        def check_asset(data: str) -> str | None:
            if data not in assets:
                assets[data] = self._find_asset(data)
            found = assets[data]
            return found if isinstance(found, str) else None

        if not problems:
            problems = check_members(
                self.blobs,
                recipe,
                request.params,
                members,
                max_members=self._groups.max_members,
                check_asset=check_asset,
            )
        if problems:
            raise InvalidRunRequest(problems)
        now = self._clock()
        group = RunGroup(
            id=uuid4(),
            recipe=request.recipe,
            params=dict(request.params),
            concurrency=request.concurrency or self._groups.default_concurrency,
            trigger=trigger,
            source=_source(request, len(members)),
            trigger_details=dict(trigger_details or {}),
            created_at=now,
            updated_at=now,
        )
        starts: dict[UUID, StartRun] = {}
        for member in members:
            run_id = uuid4()
            starts[run_id] = StartRun(
                run_id,
                request.recipe,
                member.data,
                {**request.params, **member.params},
                trigger,
                trigger_details={"group_id": str(group.id), **(trigger_details or {})},
                entity=member.entity,
                force=request.force,
                group_id=group.id,
                data_asset=_resolved(assets.get(member.data)),
            )
        decided = _Decided()
        decisions = self.store.create_group(
            group,
            [(run_id, start.entity or "") for run_id, start in starts.items()],
            lambda run_id: decided.deciding(run_id, starts[run_id], self._clock, self._policy),
            claim=claim,
        )
        if decisions is None:
            # Another upload extended the burst, or another coordinator took the claim.
            return None
        self._after_group(decisions, decided)
        log.info("run group %s: %d %s members", group.id, len(members), request.recipe)
        self.admit_group(group.id)
        return self.get_group(group.id)

    def get_group(self, group_id: UUID, *, status: RunStatus | None = None) -> GroupView:
        """The group with its members (those in ``status`` only, if given)."""
        group, counts = self.store.get_group(group_id)
        return GroupView(group, counts, self.store.list_group_members(group_id, status=status))

    def list_groups(
        self,
        *,
        status: GroupStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        id_prefix: str | None = None,
    ) -> tuple[list[GroupView], int]:
        page, total = self.store.list_groups(
            status=status, limit=limit, offset=offset, id_prefix=id_prefix
        )
        return [GroupView(group, counts) for group, counts in page], total

    def cancel_group(self, group_id: UUID) -> GroupView:
        """Cancel every unfinished member and admit no more. Raises GroupNotFound, or
        GroupTransitionError if the group has finished."""

        def change(group: RunGroup, members: list[MemberSlot]) -> tuple[RunGroup, list[UUID]]:
            if group.status in FINISHED_GROUP_STATUSES:
                raise GroupTransitionError(f"cannot cancel run group {group.id}: {group.status}")
            unfinished = [m.run_id for m in members if m.status in ("waiting", "queued", "running")]
            return group.model_copy(update={"cancelled": True, "updated_at": self._clock()}), (
                unfinished
            )

        self._change_group(group_id, change, CancelRun)
        return self.get_group(group_id)

    def retry_group(self, group_id: UUID) -> GroupView:
        """Retry the failed and cancelled members only (each resumes at the stage that
        stopped, through admission). Raises GroupTransitionError if there are none."""

        def change(group: RunGroup, members: list[MemberSlot]) -> tuple[RunGroup, list[UUID]]:
            stopped = [m.run_id for m in members if m.status in ("failed", "cancelled")]
            if not stopped:
                raise GroupTransitionError(
                    f"run group {group.id} has no failed or cancelled member to retry"
                )
            return group.model_copy(update={"cancelled": False, "updated_at": self._clock()}), (
                stopped
            )

        self._change_group(group_id, change, RetryRun)
        self.admit_group(group_id)
        return self.get_group(group_id)

    def admit_group(self, group_id: UUID) -> int:
        """Start as many waiting members as the group has free slots; returns how many."""

        def change(group: RunGroup, members: list[MemberSlot]) -> tuple[RunGroup, list[UUID]]:
            return group, admit(group, members)

        return len(self._change_group(group_id, change, AdmitRun))

    def admission_tick(self) -> int:
        """Admit members of every group that has some left; returns how many started."""
        return sum(self.admit_group(group_id) for group_id in self.store.list_unsettled_groups())

    def _change_group(
        self,
        group_id: UUID,
        change: Callable[[RunGroup, list[MemberSlot]], tuple[RunGroup, list[UUID]]],
        make_input: Callable[[UUID], AdmitRun | CancelRun | RetryRun],
    ) -> list[Decision]:
        decided = _Decided()
        _, decisions = self.store.update_group(
            group_id,
            change,
            lambda run_id: decided.deciding(run_id, make_input(run_id), self._clock, self._policy),
            now=self._clock(),
        )
        self._after_group(decisions, decided)
        return decisions

    def _after_group(self, decisions: list[Decision], decided: _Decided) -> None:
        for decision in decisions:
            message, previous = decided.inputs[decision.run.id]
            with decision_span(message):
                self._decided.start = (message, previous)
                self._after(decision)

    def close(self) -> None:
        self.bus.close()
        self.store.close()

    def check_ready(self) -> None:
        """Raises if the run store cannot commit a write, or its disk is nearly full."""
        self.store.check_writable(min_free_bytes=self._min_free_disk_bytes)

    def last_successes(self) -> dict[tuple[str, str | None], datetime]:
        """(recipe, entity or None) -> when its latest successful run finished."""
        return self.store.last_successes()

    def _validate(
        self, recipe_name: str, data: str, params: Mapping[str, Any], *, entity: str | None = None
    ) -> DataAssetStart | None:
        """Raises InvalidRunRequest naming each problem; returns the data-asset version to
        train on when ``data`` is ``asset:<name>@<version|latest>`` (``latest`` resolved now,
        so the run keeps its version whatever is registered meanwhile)."""
        problems: list[Problem] = []
        try:
            recipe = self._recipes(recipe_name)
        except UnknownRecipeError as exc:
            problems.append(Problem(("recipe",), str(exc)))
        else:
            try:
                recipe.parse_params(params)
            except ValidationError as exc:
                problems.extend(
                    Problem(("params", *error["loc"]), error["msg"]) for error in exc.errors()
                )
            try:
                recipe.registered_model_name(entity)
                recipe.data_asset_name(entity)
            except (InvalidEntityError, InvalidDataAssetError) as exc:
                problems.append(Problem(("entity",), str(exc)))
        asset = None
        if is_asset_reference(data):
            asset = self._resolve_asset(data, problems)
        else:
            self._check_data_prefix(data, problems)
        if problems:
            raise InvalidRunRequest(problems)
        return asset

    def data_asset_versions(self, name: str) -> list[DataAssetVersion]:
        """Every version of data asset ``name``, oldest first. Raises DataAssetNotFoundError
        (none, or data assets not configured) or InvalidDataAssetError."""
        if self._data_assets is None:
            raise DataAssetNotFoundError(name)
        versions = self._data_assets.list_versions(name)
        if not versions:
            raise DataAssetNotFoundError(name)
        return versions

    def _check_data_prefix(self, data: str, problems: list[Problem]) -> None:
        try:
            container, _ = validate_prefix(data)
        except InvalidBlobNameError as exc:
            problems.append(Problem(("data",), str(exc)))
            return
        # The workers read data as a folder: what they will find is what is checked here.
        folder = folder_prefix(data)
        if container in RESERVED_CONTAINERS:
            problems.append(
                Problem(("data",), f"{container!r} holds the workers' own outputs, not data")
            )
        elif not holds_blobs(self.blobs, folder):
            problems.append(Problem(("data",), f"no blobs in the folder {folder!r}"))

    def _resolve_asset(self, data: str, problems: list[Problem]) -> DataAssetStart | None:
        found = self._find_asset(data)
        if isinstance(found, str):
            problems.append(Problem(("data",), found))
            return None
        return found

    def _find_asset(self, data: str) -> DataAssetStart | str:
        """The version ``asset:<name>@<version|latest>`` names, or why there is none."""
        if self._data_assets is None:
            return "data assets are not configured here"
        try:
            name, version = parse_asset_reference(data)
            found = self._data_assets.get(name, version)
        except (InvalidDataAssetError, DataAssetNotFoundError, DataAssetRequestError) as exc:
            return str(exc)
        # Stage outputs are named without the trailing '/' (the worker reads them as folders).
        return DataAssetStart(found.name, found.version, found.prefix.rstrip("/"))

    def _apply(self, run_id: UUID, message: CoordinatorInput) -> Run:
        with decision_span(message):
            decision = self.store.apply(run_id, self._deciding(message))
            # Only a bus message carries an inbox id, so the store always decides here.
            assert decision is not None
            self._after(decision)
        return decision.run

    # --- bus events ------------------------------------------------------------------------

    def consume_events(self, *, max_messages: int = 10, max_wait_s: float = 1.0) -> int:
        """Receive and handle one batch of stage events; returns how many were received."""
        return self._consume(EVENTS_TOPIC, self.handle_bus_message, max_messages, max_wait_s)

    def _consume(
        self,
        topic: str,
        handle: Callable[[ReceivedMessage], None],
        max_messages: int,
        max_wait_s: float,
    ) -> int:
        received = self.bus.receive_messages(
            topic,
            COORDINATOR_SUBSCRIPTION,
            max_message_count=max_messages,
            max_wait_time=max_wait_s,
        )
        return handle_each(self.bus, received, handle, consumer=f"coordinator {topic}")

    def handle_bus_message(self, received: ReceivedMessage) -> None:
        """Decode, decide, commit, then settle: a crash anywhere redelivers, never loses."""
        try:
            event = decode(received.body, received.application_properties)
        except MalformedMessageError as exc:
            self._dead_letter(received, MALFORMED_MESSAGE, str(exc))
            return
        if isinstance(event, WorkerHeartbeat):
            self._record_heartbeat(received, event)
            return
        if not isinstance(event, StageStarted | StageProgress | StageSucceeded | StageFailed):
            self._dead_letter(
                received, "UnexpectedMessage", f"{event.message_type} is not a stage event"
            )
            return
        with decision_span(event):
            self._handle_stage_event(received, event)

    def _record_heartbeat(self, received: ReceivedMessage, beat: WorkerHeartbeat) -> None:
        """Keep the worker's latest state, dated by the bus (its enqueued time), not by the
        worker's clock. A failure to record one is no reason to redeliver it: the next one
        comes within its interval."""
        checked_at = received.enqueued_time
        seen = WorkerSeen(
            worker=beat.worker,
            checked_at=checked_at,
            idle_since=None if beat.idle_s is None else checked_at - timedelta(seconds=beat.idle_s),
            expires_at=checked_at + timedelta(seconds=HEARTBEATS_MISSED * beat.interval_s + 1),
        )
        with self._heard_lock:
            if checked_at >= self._started_at:
                self._heard[beat.correlation_id] = (beat.stage, beat.warming, seen.expires_at)
            now = self._clock()
            for worker_id in [key for key, heard in self._heard.items() if heard[2] <= now]:
                del self._heard[worker_id]
        try:
            self.store.record_heartbeat(
                str(beat.correlation_id),
                beat.worker,
                beat.stage,
                seen,
                slots=beat.slots,
                busy=beat.busy,
            )
        except Exception as exc:
            log.warning("could not record the heartbeat of %s: %s", beat.worker, exc)
        with contextlib.suppress(MessageLockLostError):
            self.bus.complete_message(received)

    def worker_readiness(self) -> dict[str, str]:
        """Per stage: ``warm`` (a worker took its first message or can: its imports and store
        set-up are done), ``warming`` (a worker is still at them), or ``none`` (no heartbeat
        this coordinator heard since it started is still current)."""
        now = self._clock()
        states: dict[str, str] = dict.fromkeys(STAGES, "none")
        with self._heard_lock:
            for stage, warming, expires_at in self._heard.values():
                if expires_at > now and states[stage] != "warm":
                    states[stage] = "warming" if warming else "warm"
        return states

    def _record_stage_start(self, received: ReceivedMessage, event: StageStarted) -> None:
        """A worker that starts stages without sending heartbeats is alive all the same: its
        stage must not be taken for one without a worker. Best effort, like a heartbeat; on
        its own only when applying the event, which records it too, failed."""
        try:
            self.store.record_stage_start(event.stage, event.worker, received.enqueued_time)
        except Exception as exc:
            log.warning("could not record that %s started %s: %s", event.worker, event.stage, exc)

    def _handle_stage_event(
        self,
        received: ReceivedMessage,
        event: StageStarted | StageProgress | StageSucceeded | StageFailed,
    ) -> None:
        try:
            decision = self.store.apply(
                event.correlation_id,
                self._deciding(event),
                inbox_message_id=received.message_id,
                # The per-run hot path: no transaction of its own for this bookkeeping.
                stage_start=(
                    StageStart(event.stage, event.worker, received.enqueued_time)
                    if isinstance(event, StageStarted)
                    else None
                ),
            )
        except RunNotFound as exc:
            if isinstance(event, StageStarted):
                self._record_stage_start(received, event)
            self._dead_letter(received, "UnknownRun", str(exc))
            return
        except Exception:
            if isinstance(event, StageStarted):
                self._record_stage_start(received, event)
            # Anything else (database down, a bug) may pass; the bus redelivers and, after its
            # max delivery count, dead-letters the message itself.
            log.exception("could not apply %s; abandoning it", received.message_id)
            self.bus.abandon_message(received)
            return
        try:
            self.bus.complete_message(received)
        except MessageLockLostError:
            log.warning("lock on %s expired; its redelivery will be ignored", received.message_id)
        if decision is None:
            log.info("%s was processed before; completed again", received.message_id)
        else:
            self._after(decision)

    def _dead_letter(self, received: ReceivedMessage, reason: str, description: str) -> None:
        dead_letter(self.bus, received, reason=reason, description=description)

    # --- blob triggers ---------------------------------------------------------------------

    def receive_blob_events(self, events: Sequence[ParsedEvent]) -> TriggerReport:
        """Route, de-duplicate and record parsed blob events; starts no run by itself
        (``fire_due_triggers`` does). Raises if the store cannot record them."""
        report = TriggerReport(received=len(events))
        hits: list[TriggerHit] = []
        for event in events:
            if isinstance(event, SubscriptionValidation):
                report.validations.append(event)
            elif isinstance(event, IgnoredEvent):
                report.ignored += 1
                log.info(
                    "ignoring %s event %s (%s): %s",
                    event.event_type,
                    event.event_id,
                    event.subject,
                    event.reason,
                )
            else:
                hit = self._hit(event)
                if hit is None:
                    report.ignored += 1
                else:
                    hits.append(hit)
        if not hits:
            return report
        fresh = self.store.record_trigger_hits(hits, self._clock())
        for hit, new in zip(hits, fresh, strict=True):
            if new:
                report.accepted += 1
                log.info(
                    "blob %s (event %s) counts towards a %s run on %s",
                    hit.blob_name,
                    hit.event_id,
                    hit.recipe,
                    hit.data,
                )
                # Its burst is due at once (a marker) or at a new time.
                self.trigger_due.set()
            else:
                report.duplicates += 1
                log.info("blob event %s (%s) seen before; ignored", hit.event_id, hit.blob_name)
        return report

    def _hit(self, event: BlobCreated) -> TriggerHit | None:
        routed = route(event, self._triggers.rules)
        if isinstance(routed, NoMatch):
            log.info(
                "ignoring blob %s (event %s): %s", event.blob_name, event.event_id, routed.reason
            )
            return None
        rule = routed.rule
        quiet = self._triggers.debounce_s if rule.debounce_s is None else rule.debounce_s
        return TriggerHit(
            event_id=event.event_id,
            blob_name=event.blob_name,
            etag=event.etag,
            recipe=rule.recipe,
            data=routed.data,
            params=dict(rule.params),
            quiet_s=0.0 if routed.immediate else quiet,
            max_wait_s=max(quiet, self._triggers.debounce_max_s),
            rule=rule.describe(),
            group=None if rule.group is None else rule.group.model_dump(mode="json"),
        )

    def fire_due_triggers(self) -> list[Run]:
        """Start the run of every burst whose quiet window has passed; returns those runs."""
        started = []
        for burst in self.store.pending_bursts(due_by=self._clock()):
            run = self._fire(burst)
            if run is not None:
                started.append(run)
        return started

    def _fire(self, burst: PendingBurst) -> Run | None:
        if burst.details.get("group") is not None:
            self._fire_group(burst)
            return None
        try:
            self._validate(burst.recipe, burst.data, burst.params)
        except InvalidRunRequest as exc:
            if self.store.drop_burst(burst):
                log.warning(
                    "dropping the %s run on %s that %d blob event(s) asked for: %s",
                    burst.recipe,
                    burst.data,
                    burst.details.get("events", 0),
                    exc,
                )
            return None
        run_id = uuid4()
        start = StartRun(
            run_id, burst.recipe, burst.data, burst.params, "blob", trigger_details=burst.details
        )
        with decision_span(start):
            decision = self.store.fire_burst(burst, run_id, self._deciding(start))
            if decision is None:
                # Another upload extended the burst, or another coordinator started it.
                return None
            self._after(decision)
        return decision.run

    def _fire_group(self, burst: PendingBurst) -> GroupView | None:
        rule = GroupRule.model_validate(burst.details["group"])
        request = GroupRequest(
            recipe=burst.recipe,
            params=burst.params,
            expand=rule.expansion(burst.data),
            concurrency=rule.concurrency,
        )
        details = {k: v for k, v in burst.details.items() if k != "group"}
        try:
            return self._start_group(request, "blob", details, self.store.burst_claim(burst))
        except InvalidRunRequest as exc:
            if self.store.drop_burst(burst):
                log.warning(
                    "dropping the %s group on %s that %d blob event(s) asked for: %s",
                    burst.recipe,
                    burst.data,
                    burst.details.get("events", 0),
                    exc,
                )
            return None

    def consume_blob_events(self, *, max_messages: int = 10, max_wait_s: float = 1.0) -> int:
        """Receive and handle one batch from ``blob-events``; returns how many were received."""
        return self._consume(
            BLOB_EVENTS_TOPIC, self.handle_blob_event_message, max_messages, max_wait_s
        )

    def handle_blob_event_message(self, received: ReceivedMessage) -> None:
        """One message of Event Grid -> Service Bus: one event (or an array), either schema."""
        try:
            events = decode_events(received.body)
        except MalformedEventError as exc:
            self._dead_letter(received, MALFORMED_EVENT, str(exc))
            return
        try:
            self.receive_blob_events(events)
        except Exception:
            log.exception("could not record blob events of %s; abandoning it", received.message_id)
            self.bus.abandon_message(received)
            return
        try:
            self.bus.complete_message(received)
        except MessageLockLostError:
            # Its redelivery finds the events seen and changes nothing.
            log.warning("lock on %s expired; its redelivery will be ignored", received.message_id)

    def fire_due_schedules(self) -> int:
        """Start the run (or group) of every schedule with a tick due; returns how many."""
        started = 0
        for schedule in self._triggers.schedules:
            now = self._clock()
            state = self.store.get_schedule(schedule.key)
            if state is None:
                # A new schedule starts nothing until its next tick.
                self.store.add_schedule(
                    schedule.key,
                    schedule.describe(),
                    latest_tick(schedule.cron, now, schedule.timezone),
                )
                continue
            tick = due_tick(schedule.cron, state.last_tick, now, schedule.timezone)
            if tick is not None and self._fire_schedule(schedule, state, tick):
                started += 1
        return started

    def _fire_schedule(self, schedule: Schedule, state: ScheduleState, tick: datetime) -> bool:
        details = {
            "schedule": schedule.describe(),
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "tick": tick.isoformat(),
        }
        claim = self.store.schedule_claim(state, tick)
        try:
            if schedule.group is not None:
                request = GroupRequest(
                    recipe=schedule.recipe,
                    params=schedule.params,
                    expand=schedule.group.expansion(schedule.data),
                    concurrency=schedule.group.concurrency,
                )
                return self._start_group(request, "schedule", details, claim) is not None
            asset = self._validate(
                schedule.recipe, schedule.data, schedule.params, entity=schedule.entity
            )
        except InvalidRunRequest as exc:
            if self.store.skip_tick(state, tick):
                log.warning("schedule %s: skipping the %s tick: %s", schedule.describe(), tick, exc)
            return False
        run_id = uuid4()
        start = StartRun(
            run_id,
            schedule.recipe,
            schedule.data,
            schedule.params,
            "schedule",
            trigger_details=details,
            entity=schedule.entity,
            data_asset=asset,
        )
        with decision_span(start):
            decision = self.store.start_claimed(claim, run_id, self._deciding(start))
            if decision is None:
                return False  # another coordinator acted on this tick
            self._after(decision)
        log.info("schedule %s: run %s for the %s tick", schedule.describe(), run_id, tick)
        return True

    def list_schedules(self) -> list[ScheduleView]:
        """Every schedule, in configuration order, with its latest and next tick."""
        now = self._clock()
        views = []
        for schedule in self._triggers.schedules:
            state = self.store.get_schedule(schedule.key)
            # A schedule not recorded yet acts on nothing before its first tick after now.
            after = now if state is None else state.last_tick
            views.append(
                ScheduleView(
                    schedule,
                    None if state is None else state.last_tick,
                    next_tick(schedule.cron, after, schedule.timezone),
                )
            )
        return views

    def trigger_tick(self) -> int:
        """Fire due bursts and schedules. Returns the runs (and groups) started."""
        return len(self.fire_due_triggers()) + self.fire_due_schedules()

    def trigger_wait_s(self, most_s: float) -> float:
        """Seconds until the next burst or schedule tick is due, at most ``most_s``."""
        now = self._clock()
        due: list[datetime] = [burst.due_at for burst in self.store.pending_bursts(limit=1)]
        for schedule in self._triggers.schedules:
            state = self.store.get_schedule(schedule.key)
            # A schedule not recorded yet is, at the next tick; an overdue one at once.
            due.append(
                now
                if state is None
                else next_tick(schedule.cron, state.last_tick, schedule.timezone)
            )
        return _wait_s(now, due, most_s)

    def _check_trigger_rules(self) -> None:
        """Fail at start-up, not at the first upload or tick, on a rule or schedule that names
        an unknown recipe, params the recipe refuses or a bad entity."""
        for index, rule in enumerate(self._triggers.rules):
            try:
                recipe = self._recipes(rule.recipe)
                recipe.parse_params(rule.params)
            except (UnknownRecipeError, ValidationError) as exc:
                raise ConfigurationError(
                    f"trigger rule {index} ({rule.describe()}): {exc}"
                ) from exc
        for schedule in self._triggers.schedules:
            try:
                recipe = self._recipes(schedule.recipe)
                recipe.parse_params(schedule.params)
                recipe.registered_model_name(schedule.entity)
            except (UnknownRecipeError, ValidationError, InvalidEntityError) as exc:
                raise ConfigurationError(f"schedule {schedule.describe()}: {exc}") from exc

    # --- watchdog and relay ----------------------------------------------------------------

    def watchdog_wait_s(self, most_s: float) -> float:
        """Seconds until the earliest deadline of an active run (at most ``most_s``), or until
        a retention is due; remembered as ``watchdog_at`` so that a decision writing an earlier
        deadline wakes the watchdog (``watchdog_due``)."""
        now = self._clock()
        due = []
        deadline = self.store.next_deadline()
        if deadline is not None:
            due.append(deadline)
            # A run is active: its stage's last worker may stop counting as live before then.
            horizons = self.store.heartbeat_horizons()
            due += [at for at in horizons.values() if at > now]
            if self._heartbeats_due_by > now and len(horizons) < len(STAGES):
                due.append(self._heartbeats_due_by)
        for last, interval in (
            (self._retained_at, self._retention.interval_s),
            (self._store_pruned_at, self._store_retention.interval_s),
        ):
            if last is not None:
                due.append(now + timedelta(seconds=last + interval - time.monotonic()))
        wait = _wait_s(now, due, most_s)
        self.watchdog_at = now + timedelta(seconds=wait)
        return wait

    def watchdog_tick(self) -> int:
        """Act on every overdue stage, with what the workers' heartbeats say of its stage, and
        report the queued attempts of every stage known to have no live worker; returns how
        many deadlines were due."""
        now = self._clock()
        due = self.store.list_due_deadlines(now)
        live = self.store.workers_by_stage(now)
        silent = self.store.silent_stages()
        for expired in due:
            self._apply(
                expired.run_id,
                dataclasses.replace(expired, workers=_workers_of(expired.stage, live, silent)),
            )
        self._report_stages_without_worker(now, live, silent)
        return len(due)

    def _report_stages_without_worker(
        self, now: datetime, live: Mapping[str, object], silent: set[str]
    ) -> None:
        """``NoLiveWorker`` for the queued attempts of each stage whose workers all stopped
        sending heartbeats (or, since the coordinator started, never sent one) and that no
        worker without heartbeats was seen working for."""
        horizons = self.store.heartbeat_horizons()
        gone = {
            stage
            for stage in STAGES
            if stage not in live
            and stage not in silent
            and horizons.get(stage, self._heartbeats_due_by) <= now
        }
        if not gone:
            return
        for run, stage in self.store.list_queued_attempts():
            if stage.stage in gone and stage.waiting != no_live_worker(stage.stage):
                self._apply(run.id, NoLiveWorker(run.id, stage.stage, stage.attempt))

    def prune_cache(self) -> list[str]:
        """Remove the cached stage outputs nothing needs (``coordinator/retention.py``);
        returns their prefixes."""
        if self._retention.max_age_s is None:
            return []
        now = self._clock()
        max_age = timedelta(seconds=self._retention.max_age_s)
        # Listed before the runs are read: an entry a run starts using meanwhile is recent.
        entries = cache_entries(self.blobs)
        protected = self.store.protected_outputs(updated_since=now - max_age)
        if self._data_assets is not None:
            # A data-asset version points at its split for good.
            protected |= {prefix.rstrip("/") for prefix in self._data_assets.prefixes()}
        removed = []
        for entry in removable(entries, protected, now=now, max_age=max_age):
            remove_entry(self.blobs, entry)
            removed.append(entry.prefix)
        if removed:
            log.info("removed %d cached stage outputs older than %s", len(removed), max_age)
        return removed

    def retention_tick(self) -> int:
        """``prune_cache`` once per retention interval; returns how many entries went."""
        due = self._retained_at is None or (
            time.monotonic() - self._retained_at >= self._retention.interval_s
        )
        if not due:
            return 0
        self._retained_at = time.monotonic()
        return len(self.prune_cache())

    def prune_store(self) -> dict[str, int]:
        """Delete the store's bookkeeping past its horizon (``StoreRetention``), then
        checkpoint a SQLite store's write-ahead log, or vacuum and analyze the PostgreSQL tables
        that lost rows; returns the rows deleted per table."""
        now = self._clock()
        removed = self.store.prune(
            before=now - timedelta(seconds=self._store_retention.horizon_s),
            trigger_events_before=now - timedelta(seconds=self._triggers.dedup_retention_s),
        )
        self.store.checkpoint()
        try:
            self.store.vacuum(table for table, count in removed.items() if count)
        except Exception as exc:
            # Autovacuum still comes by; a role that may not vacuum must not fail retention.
            log.warning("run store retention: VACUUM of the pruned tables failed: %s", exc)
        if any(removed.values()):
            log.info(
                "run store retention: deleted %s",
                ", ".join(f"{count} {table}" for table, count in removed.items() if count),
            )
        return removed

    def store_retention_tick(self) -> dict[str, int]:
        """``prune_store`` once per ``StoreRetention.interval_s`` (the first time at once)."""
        due = self._store_pruned_at is None or (
            time.monotonic() - self._store_pruned_at >= self._store_retention.interval_s
        )
        if not due:
            return {}
        self._store_pruned_at = time.monotonic()
        return self.prune_store()

    def relay_outbox(self) -> int:
        """Publish pending outbox rows, then mark them published; returns how many."""
        pending = self.store.pending_outbox(self.relay_batch_size)
        by_topic: dict[str, list[OutboxMessage]] = {}
        for row in pending:
            by_topic.setdefault(row.topic, []).append(row)
        for topic, rows in by_topic.items():
            self.bus.send_messages(topic, [row.message for row in rows])
            self.store.mark_published(row.id for row in rows)
        return len(pending)

    # ---------------------------------------------------------------------------------------

    def _deciding(self, message: CoordinatorInput) -> Callable[[Run | None], Decision]:
        def fn(run: Run | None) -> Decision:
            # ``now`` is read inside so that a retry after a conflict decides on fresh time.
            decision = decide(run, message, now=self._clock(), policy=self._policy)
            self._decided.start = (message, run)
            return decision

        return fn

    def _after(self, decision: Decision) -> None:
        for note in decision.notes:
            log.info("run %s: %s", decision.run.id, note)
        if decision.commands:
            self.outbox_written.set()
        deadline = decision.run.deadline
        if deadline is not None and (self.watchdog_at is None or deadline < self.watchdog_at):
            self.watchdog_due.set()
        if decision.run.group_id is not None and decision.run.status in (
            "waiting",
            "succeeded",
            "failed",
            "cancelled",
        ):
            # A slot may be free, or a member waits for one.
            self.admission_due.set()
        # The store decided in this thread; the last call of ``fn`` is the committed one.
        message, previous = getattr(self._decided, "start", (None, None))
        record_decision(decision, message, previous, recipes=self._recipes)


class _Decided:
    """Decide functions for the runs of one group transaction that remember, per run, the
    input and the state each decision started from (for telemetry after the commit)."""

    def __init__(self) -> None:
        self.inputs: dict[UUID, tuple[CoordinatorInput, Run | None]] = {}

    def deciding(
        self,
        run_id: UUID,
        message: CoordinatorInput,
        clock: Callable[[], datetime],
        policy: Policy,
    ) -> Callable[[Run | None], Decision]:
        def fn(run: Run | None) -> Decision:
            self.inputs[run_id] = (message, run)
            if isinstance(message, CancelRun | RetryRun) and run is not None:
                try:
                    return decide(run, message, now=clock(), policy=policy)
                except InvalidTransition:
                    # The member finished (or restarted) since the group looked: leave it.
                    return Decision(run, notes=[f"ignored: {type(message).__name__}"])
            return decide(run, message, now=clock(), policy=policy)

        return fn


def _workers_of(
    stage: Stage, live: Mapping[str, tuple[WorkerSeen, ...]], silent: set[str]
) -> tuple[WorkerSeen, ...] | None:
    """What a queue deadline goes by: the stage's live workers; None (a plain timeout) when it
    has none but a worker without heartbeats was seen working for it."""
    workers = live.get(stage, ())
    if not workers and stage in silent:
        return None
    return workers


def _wait_s(now: datetime, due: Sequence[datetime], most_s: float) -> float:
    """Seconds from ``now`` until the earliest of ``due`` (a little after it), at most
    ``most_s``."""
    waits = [(at - now).total_seconds() + WAKE_MARGIN_S for at in due]
    return max(min([most_s, *waits]), WAKE_MIN_S)


def _source(request: GroupRequest, count: int) -> dict[str, Any]:
    """How the members were listed, for the group's record."""
    if request.expand is not None:
        return {**request.expand.model_dump(mode="json"), "members": count}
    return {"kind": "members", "members": count}


@dataclass(frozen=True)
class LoopIntervals:
    """How long each loop waits at most. The loops are woken by what gives them work (a
    decision's commands, an earlier deadline, a blob event, a finished group member) and
    sleep until their next deadline read from the store; the interval covers work that
    another coordinator (sharing the store) left, or a wake-up lost to an error."""

    consumer_wait_s: float = 1.0
    relay_interval_s: float = 1.0
    watchdog_interval_s: float = 5.0
    trigger_interval_s: float = 0.5
    group_interval_s: float = 2.0
    # Pause after an error so a broken dependency is not hammered.
    error_backoff_s: float = 2.0


class BackgroundLoops:
    """The consumer, relay, watchdog, blob-events, triggers and groups threads, and with a
    ``blob_poller`` (storage without Event Grid) the blob-poller thread; ``stop`` ends them
    within about one wait."""

    def __init__(
        self,
        coordinator: Coordinator,
        intervals: LoopIntervals,
        *,
        blob_poller: BlobChangePoller | None = None,
        blob_poller_interval_s: float = 5.0,
    ) -> None:
        self._coordinator = coordinator
        self._intervals = intervals
        self._blob_poller = blob_poller
        self._blob_poller_interval_s = blob_poller_interval_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Each loop's latest error, cleared by its next success: what /readyz reports.
        self.errors: dict[str, str] = {}

    def start(self) -> None:
        self._stop.clear()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("consumer", self._consume),
            ("relay", self._relay),
            ("watchdog", self._watchdog),
            ("blob-events", self._consume_blob_events),
            ("triggers", self._fire_triggers),
            ("groups", self._admit_members),
        ]
        if self._blob_poller is not None:
            loops.append(("blob-poller", self._poll_blobs))
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"coordinator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        # Wake every loop from its wait; they see the stop flag.
        self._coordinator.bus.interrupt_receives()
        self._coordinator.outbox_written.set()
        self._coordinator.trigger_due.set()
        self._coordinator.admission_due.set()
        self._coordinator.watchdog_due.set()
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("%s did not stop within %.0f s", thread.name, timeout_s)
        self._threads.clear()
        self._coordinator.bus.resume_receives()

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def _consume(self) -> None:
        self._receive_until_stopped("consumer", self._coordinator.consume_events)

    def _relay(self) -> None:
        outbox_written = self._coordinator.outbox_written
        # What an earlier process left unpublished goes out at once.
        outbox_written.set()
        while not self._stop.is_set():
            outbox_written.wait(self._intervals.relay_interval_s)
            # Cleared before publishing: a decision made meanwhile sets it again.
            outbox_written.clear()
            if not self._stop.is_set() and not self._guarded("relay", self._relay_all):
                outbox_written.set()  # what failed is tried again after the error pause

    def _relay_all(self) -> None:
        # A batch short of full was all there was: a decision committed since it was read set
        # ``outbox_written`` again (after its commit), so looking again now would find nothing.
        full = self._coordinator.relay_batch_size
        while self._coordinator.relay_outbox() >= full and not self._stop.is_set():
            pass

    def _watchdog(self) -> None:
        coordinator = self._coordinator
        while not self._stop.is_set():
            # Cleared before reading the next deadline: a decision committed later sets it.
            coordinator.watchdog_due.clear()
            coordinator.watchdog_due.wait(
                self._wait_s(
                    "watchdog", coordinator.watchdog_wait_s, self._intervals.watchdog_interval_s
                )
            )
            if self._stop.is_set():
                break
            self._guarded("watchdog", coordinator.watchdog_tick)
            # Cache and store retention ride on the watchdog's thread, each on its own interval.
            self._guarded("retention", coordinator.retention_tick)
            self._guarded("store-retention", coordinator.store_retention_tick)

    def _poll_blobs(self) -> None:
        poller = self._blob_poller
        assert poller is not None
        while not self._stop.is_set():
            self._guarded("blob-poller", poller.poll)
            self._stop.wait(self._blob_poller_interval_s)

    def _consume_blob_events(self) -> None:
        self._receive_until_stopped("blob-events", self._coordinator.consume_blob_events)

    def _receive_until_stopped(self, loop: str, consume: Callable[..., int]) -> None:
        wait_s = self._intervals.consumer_wait_s
        while not self._stop.is_set():
            self._guarded(loop, lambda: consume(max_wait_s=wait_s))

    def _fire_triggers(self) -> None:
        coordinator = self._coordinator
        while not self._stop.is_set():
            # Cleared before reading the next due time: a blob event recorded later sets it.
            coordinator.trigger_due.clear()
            coordinator.trigger_due.wait(
                self._wait_s(
                    "triggers", coordinator.trigger_wait_s, self._intervals.trigger_interval_s
                )
            )
            if not self._stop.is_set():
                self._guarded("triggers", coordinator.trigger_tick)

    def _admit_members(self) -> None:
        admission_due = self._coordinator.admission_due
        while not self._stop.is_set():
            admission_due.wait(self._intervals.group_interval_s)
            admission_due.clear()
            if not self._stop.is_set():
                self._guarded("groups", self._coordinator.admission_tick)

    def _wait_s(self, loop: str, wait_s: Callable[[float], float], most_s: float) -> float:
        """``wait_s(most_s)``, or ``most_s`` if it fails (logged and kept like a step's error)."""
        found = [most_s]
        self._guarded(loop, lambda: found.append(wait_s(most_s)), wait=False)
        return found[-1]

    def _guarded(self, loop: str, step: Callable[[], object], *, wait: bool = True) -> bool:
        """Run ``step``; an error is logged, kept for /readyz and (``wait``) followed by the
        error pause. Returns whether it succeeded."""
        try:
            step()
        except Exception as exc:
            self.errors[loop] = f"{type(exc).__name__}: {exc}"
            # An expected outage (bus or database down) needs no stack trace; a bug does.
            expected = isinstance(exc, RetrainerError)
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "%s failed: %s; retrying in %.1f s",
                loop,
                exc,
                self._intervals.error_backoff_s,
                exc_info=not expected,
            )
            if wait:
                self._stop.wait(self._intervals.error_backoff_s)
            return False
        self.errors.pop(loop, None)
        return True
