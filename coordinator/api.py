"""The coordinator's REST API.

``create_app`` builds the app; its lifespan builds the coordinator from settings (unless one is
given) in the background (``coordinator/startup.py``: ``/healthz`` answers at once, ``/readyz``
once the run store and the bus are connected) and runs the background loops, and stops them on
shutdown (uvicorn turns SIGTERM into a shutdown). Nothing connects at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from coordinator.apidocs import add_docs_routes
from coordinator.auth import Authenticator, authorize
from coordinator.bootstrap import build_blob_poller, build_champions, build_coordinator
from coordinator.dashboard import add_dashboard_routes
from coordinator.domain import (
    AttemptRecord,
    DataAssetRef,
    GroupStatus,
    InvalidTransition,
    ModelInfo,
    Run,
    RunNotFound,
    RunStatus,
    StageState,
    StageStatus,
)
from coordinator.groups import MemberRequest
from coordinator.http import (
    BodyLimits,
    SecretsHiddenApp,
    UnexpectedErrors,
    add_common_error_handlers,
)
from coordinator.models import ModelChampions
from coordinator.service import (
    BackgroundLoops,
    Coordinator,
    GroupRequest,
    GroupTransitionError,
    GroupView,
    InvalidRunRequest,
    RunConflict,
    ScheduleView,
)
from coordinator.settings import CoordinatorSettings, dashboard_mlflow_ui_url
from coordinator.startup import CoordinatorUnavailableError, Startup
from coordinator.store import GroupNotFound, PromotionRecord
from coordinator.webhook import PATH as WEBHOOK_PATH
from coordinator.webhook import WebhookConfig, add_event_routes
from shared.blobs.port import MAX_NAME_LENGTH
from shared.data_assets.port import DataAssetNotFoundError, InvalidDataAssetError
from shared.entities import MAX_ENTITY_LENGTH
from shared.errors import BlobNotFoundError, InvalidBlobNameError
from shared.groups import Expansion
from shared.limits import MAX_ERROR_CHARS, JsonLimits, check_json, truncate
from shared.messages import Stage
from shared.promotion import (
    PREVIOUS_CHAMPION_TAG,
    PROMOTED_AT_TAG,
    PROMOTED_BY_TAG,
    PROMOTION_REASON_TAG,
)
from shared.recipe import RECIPE_STAGES, RecipeStage
from shared.stage_logs import MAX_LOG_TAIL_CHARS, failure_log_blob
from shared.stage_logs import tail as log_tail
from shared.telemetry import configure_from_settings, observe_last_successes, shutdown_telemetry
from shared.tracking import METRIC_TAG_PREFIX, ModelVersionNotFoundError, ModelVersionRecord

# A stage lists its reports in this detail: {name: path relative to its output prefix}.
REPORTS_DETAIL = "reports"
MAX_REPORT_BYTES = 20 * 1024 * 1024
_REPORT_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


class ReportNotFound(Exception):
    pass


# --- schemas -----------------------------------------------------------------------------


# A run's params travel in every stage command (a bus message of at most 256 KiB) and in the
# run's stored state: generous for any recipe, small enough for both.
PARAMS_LIMITS = JsonLimits(max_depth=8, max_string_chars=4096, max_items=100, max_values=2000)
# GET /runs pages no deeper than this (SQLite's OFFSET is a signed 64-bit integer).
MAX_OFFSET = 1_000_000


def _bounded_params(params: dict[str, Any]) -> dict[str, Any]:
    check_json(params, PARAMS_LIMITS, where="params")
    return params


# Recipe params as every request takes them: a JSON object within PARAMS_LIMITS.
Params = Annotated[dict[str, Any], AfterValidator(_bounded_params)]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=200, examples=["state_identifier"])
    data: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description=(
            "blob prefix of the raw data: container/path (a folder: data/ is read); or"
            " asset:<name>@<version|latest> to train on a data-asset version without"
            " aggregation and split"
        ),
        examples=["raw/state-identifier/2025-03-01", "asset:symbol_detection-training-data@latest"],
    )
    params: Params = Field(
        default_factory=dict,
        max_length=PARAMS_LIMITS.max_items,
        description=(
            f"the recipe's parameters; JSON nested at most {PARAMS_LIMITS.max_depth} levels, "
            f"strings of at most {PARAMS_LIMITS.max_string_chars} characters, collections of "
            f"at most {PARAMS_LIMITS.max_items} items, 64-bit integers, finite numbers"
        ),
        examples=[{"n_clusters": 3}],
    )

    entity: str | None = Field(
        default=None,
        max_length=MAX_ENTITY_LENGTH,
        description="what the model is for (a species, a site): the run registers the "
        "recipe's model for this entity, which has a champion of its own",
        examples=["cygnus-buccinator"],
    )
    force: bool | list[RecipeStage] = Field(
        default=False,
        description="skip the cache of every stage (true) or of the stages named",
    )
    correlation_id: UUID | None = Field(
        default=None,
        description="the run's id, chosen by the caller (e.g. a CI pipeline): asking again with "
        "the same body returns the existing run (200); with another body is 409",
    )

    @property
    def forced_stages(self) -> tuple[RecipeStage, ...]:
        return forced_stages(self.force)


def forced_stages(force: bool | list[RecipeStage]) -> tuple[RecipeStage, ...]:
    if force is True:
        return RECIPE_STAGES
    if force is False:
        return ()
    return tuple(stage for stage in RECIPE_STAGES if stage in force)


class AttemptOut(BaseModel):
    attempt: int
    outcome: str
    error: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    deliveries: int | None = Field(
        description="bus deliveries of the attempt's command: 2 or more when a worker died or"
        " stopped mid-stage and the bus delivered it again; null if no worker reported it"
    )

    @classmethod
    def of(cls, record: AttemptRecord) -> AttemptOut:
        return cls(
            **{**record.model_dump(), "error": _bounded(record.error)},
            duration_s=_seconds(record.started_at, record.finished_at),
        )


class StageOut(BaseModel):
    name: Stage
    status: StageStatus
    attempt: int
    queued_at: datetime | None
    not_before: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    deadline: datetime | None
    worker: str | None
    cached: bool
    outputs: dict[str, str]
    metrics: dict[str, float]
    details: dict[str, Any]
    error: str | None
    deliveries: int = Field(description="bus deliveries of the current attempt's command so far")
    waiting: str | None = Field(
        description="why a queued attempt past its queue deadline still waits: its workers are"
        " busy with a backlog, or 'no live worker for stage X'"
    )
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, stage: StageState) -> StageOut:
        return cls(
            name=stage.stage,
            status=stage.status,
            attempt=stage.attempt,
            queued_at=stage.queued_at,
            not_before=stage.not_before,
            started_at=stage.started_at,
            finished_at=stage.finished_at,
            duration_s=_seconds(stage.started_at, stage.finished_at),
            deadline=stage.deadline,
            worker=stage.worker,
            cached=stage.cached,
            outputs=stage.outputs,
            metrics=stage.metrics,
            details=stage.details,
            error=_bounded(stage.error),
            deliveries=stage.deliveries,
            waiting=stage.waiting,
            attempts=[AttemptOut.of(record) for record in stage.history],
        )


class ModelOut(BaseModel):
    name: str | None
    version: str | None
    champion: bool | None = Field(description="promoted to champion; null until tag reports")
    reason: str | None

    @classmethod
    def of(cls, model: ModelInfo | None) -> ModelOut | None:
        return None if model is None else cls(**model.model_dump())


class DataAssetOut(BaseModel):
    name: str
    version: str
    reference: str = Field(
        description="what POST /runs takes as data to train on this version again",
        examples=["symbol_detection-training-data@3"],
    )

    @classmethod
    def of(cls, asset: DataAssetRef | None) -> DataAssetOut | None:
        if asset is None:
            return None
        return cls(name=asset.name, version=asset.version, reference=f"asset:{asset.input}")


class RunSummary(BaseModel):
    id: UUID
    recipe: str
    data: str
    entity: str | None
    group_id: UUID | None
    trigger: str
    status: RunStatus
    stage: Stage | None = Field(description="the stage in flight, or where the run stopped")
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    cancelled_s: float = Field(
        default=0.0,
        description="seconds the run spent cancelled before a retry resumed it (not part of its"
        " active time: duration_s less this)",
    )
    model: ModelOut | None
    data_asset: DataAssetOut | None = Field(
        default=None,
        description="the data-asset version the run trains on: its split registered, or the"
        " version its data (asset:<name>@<version|latest>) named",
    )

    @classmethod
    def of(cls, run: Run) -> RunSummary:
        reached = [s for s in run.stages if s.status != "pending"]
        return cls(
            id=run.id,
            recipe=run.recipe,
            data=run.data,
            entity=run.entity,
            group_id=run.group_id,
            trigger=run.trigger,
            status=run.status,
            stage=reached[-1].stage if reached else None,
            error=_bounded(run.error),
            created_at=run.created_at,
            updated_at=run.updated_at,
            finished_at=run.finished_at,
            duration_s=_seconds(run.created_at, run.finished_at),
            cancelled_s=_cancelled_seconds(run),
            model=ModelOut.of(run.model),
            data_asset=DataAssetOut.of(run.data_asset),
        )


class ReportOut(BaseModel):
    stage: Stage
    name: str = Field(examples=["drift_report"])
    url: str = Field(description="GET it for the report (HTML, Markdown, JSON or text)")


def _reports(run: Run) -> list[ReportOut]:
    """What stages listed in their ``reports`` detail (e.g. aggregation's drift report)."""
    return [
        ReportOut(stage=stage.stage, name=name, url=f"/runs/{run.id}/reports/{stage.stage}/{name}")
        for stage in run.stages
        if stage.status == "succeeded"
        for name in sorted(_stage_reports(stage))
    ]


def _stage_reports(stage: StageState) -> dict[str, str]:
    reports = stage.details.get(REPORTS_DETAIL)
    if not isinstance(reports, dict):
        return {}
    return {str(name): str(path) for name, path in reports.items()}


class RunOut(RunSummary):
    correlation_id: UUID
    params: dict[str, Any]
    force: list[Stage] = Field(description="the stages whose cache this run skips")
    trigger_details: dict[str, Any] = Field(
        description="for trigger 'blob': the rule, the number of events, the first and last blob"
    )
    stages: list[StageOut]
    outputs: dict[str, str]
    metrics: dict[str, float]
    reports: list[ReportOut] = Field(description="human-readable reports the stages wrote")

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls(
            **RunSummary.of(run).model_dump(),
            correlation_id=run.id,
            params=run.params,
            force=list(run.force),
            trigger_details=run.trigger_details,
            stages=[StageOut.of(stage) for stage in run.stages],
            outputs=run.outputs,
            metrics=run.metrics,
            reports=_reports(run),
        )


class MemberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str = Field(min_length=1, max_length=MAX_ENTITY_LENGTH, examples=["cygnus-buccinator"])
    data: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        examples=["datasets/species/cygnus-buccinator"],
        description="blob prefix of the member's raw data; or asset:<name>@<version|latest> to"
        " train on a data-asset version (resolved once for the whole group)",
    )
    params: Params = Field(
        default_factory=dict,
        max_length=PARAMS_LIMITS.max_items,
        description="overrides of the group's params for this member",
    )


class RunGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=200, examples=["state_identifier"])
    params: Params = Field(
        default_factory=dict,
        max_length=PARAMS_LIMITS.max_items,
        description="params every member shares",
    )
    members: list[MemberCreate] | None = Field(
        default=None, description="the members, each an entity with its data; or use expand"
    )
    expand: Expansion | None = Field(
        default=None,
        description="list the members from the blob store: one per sub-prefix of a prefix, or "
        "one per row of a CSV blob",
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="members in a stage at once (default: the setting)",
    )
    force: bool | list[RecipeStage] = Field(
        default=False, description="skip the cache of every stage (true) or of the stages named"
    )


class MemberOut(BaseModel):
    position: int
    entity: str
    run_id: UUID
    data: str
    status: RunStatus
    stage: Stage | None
    error: str | None
    model: ModelOut | None

    @classmethod
    def of(cls, position: int, entity: str, run: Run) -> MemberOut:
        summary = RunSummary.of(run)
        return cls(
            position=position,
            entity=entity,
            run_id=run.id,
            data=run.data,
            status=run.status,
            stage=summary.stage,
            error=_bounded(run.error),
            model=summary.model,
        )


class RunGroupSummary(BaseModel):
    id: UUID
    recipe: str
    status: GroupStatus
    concurrency: int
    trigger: str
    members: int
    counts: dict[RunStatus, int] = Field(description="members by status")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, view: GroupView) -> RunGroupSummary:
        group = view.group
        return cls(
            id=group.id,
            recipe=group.recipe,
            status=group.status,
            concurrency=group.concurrency,
            trigger=group.trigger,
            members=sum(view.counts.values()),
            counts=view.counts,
            created_at=group.created_at,
            updated_at=group.updated_at,
            finished_at=group.finished_at,
        )


class RunGroupOut(RunGroupSummary):
    params: dict[str, Any]
    source: dict[str, Any] = Field(description="how the members were listed")
    trigger_details: dict[str, Any]
    cancelled: bool
    member_runs: list[MemberOut] = Field(description="each member, in member order")

    @classmethod
    def of(cls, view: GroupView) -> RunGroupOut:
        group = view.group
        return cls(
            **RunGroupSummary.of(view).model_dump(),
            params=group.params,
            source=group.source,
            trigger_details=group.trigger_details,
            cancelled=group.cancelled,
            member_runs=[MemberOut.of(*member) for member in view.members],
        )


class RunGroupPage(BaseModel):
    groups: list[RunGroupSummary]
    total: int
    limit: int
    offset: int


class RunPage(BaseModel):
    runs: list[RunSummary]
    total: int
    limit: int
    offset: int


class ChampionChangeCreate(BaseModel):
    version: str = Field(pattern=r"^[1-9][0-9]{0,9}$", examples=["3"])
    reason: str = Field(min_length=1, max_length=500, examples=["rollback: v4 drifts"])
    requested_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="who asks, in the caller's own words; recorded only when the API does not"
        " authenticate callers (then with '(unauthenticated)')",
    )


class ChampionOut(BaseModel):
    model_name: str
    version: str
    promoted_by: str | None
    promoted_at: datetime | None
    reason: str | None
    previous_version: str | None
    metrics: dict[str, float]

    @classmethod
    def of(cls, record: ModelVersionRecord) -> ChampionOut:
        tags = record.tags
        metrics: dict[str, float] = {}
        for key, value in tags.items():
            if key.startswith(METRIC_TAG_PREFIX):
                with suppress(ValueError):  # a tag someone wrote by hand
                    metrics[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
        promoted_at: datetime | None = None
        with suppress(KeyError, ValueError):
            promoted_at = datetime.fromisoformat(tags[PROMOTED_AT_TAG])
        return cls(
            model_name=record.name,
            version=record.version,
            promoted_by=tags.get(PROMOTED_BY_TAG),
            promoted_at=promoted_at,
            reason=tags.get(PROMOTION_REASON_TAG),
            previous_version=tags.get(PREVIOUS_CHAMPION_TAG) or None,
            metrics=metrics,
        )


class PromotionOut(BaseModel):
    version: str
    promoted_at: datetime
    run_id: UUID | None = Field(
        description="the run whose tag stage promoted it; null: an operator's change"
    )
    promoted_by: str | None
    reason: str | None
    previous_version: str | None

    @classmethod
    def of(cls, record: PromotionRecord) -> PromotionOut:
        return cls(
            version=record.version,
            promoted_at=record.promoted_at,
            run_id=record.run_id,
            promoted_by=record.actor,
            reason=record.reason,
            previous_version=record.previous_version,
        )


class PromotionHistoryOut(BaseModel):
    model_name: str
    champion: str | None = Field(
        description="the version promoted last (the champion unless the registry's alias was"
        " moved outside the coordinator); null: none promoted through it"
    )
    promotions: list[PromotionOut] = Field(description="oldest first")


class ChampionChangeOut(BaseModel):
    changed: bool = Field(description="false when the version was the champion already")
    champion: ChampionOut


class AttemptLogOut(BaseModel):
    run_id: UUID
    stage: Stage
    attempt: int
    outcome: str
    error: str | None = Field(description="the attempt's error, secrets redacted")
    log: str | None = Field(
        description="the end of the attempt's log (so far, for a running one; a failure's"
        " traceback at its end), secrets redacted; null when its worker kept none"
    )
    truncated: bool = Field(description="the log was longer: only its end is here")


class DashboardConfigOut(BaseModel):
    mlflow_ui_url: str | None = Field(
        description="the MLflow UI to link runs and model versions to; null: none"
    )


class Readiness(BaseModel):
    status: str = Field(description="ready: the API serves runs (a run posted now queues)")
    checks: dict[str, str]
    workers: dict[str, str] = Field(
        default_factory=dict,
        description="per stage: warm (a worker has its libraries and store set up), warming "
        "(a worker is still at it; runs queue until it is done) or none (no worker heard from "
        "since this coordinator started)",
    )
    workers_warm: bool = Field(
        default=False, description="every stage has a warm worker: a run starts at once"
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def _cancelled_seconds(run: Run) -> float:
    """Time the run spent cancelled before being retried: from each cancelled attempt's end
    to the first attempt queued after it (the retry). A run still cancelled adds nothing (its
    duration ends at the cancel)."""
    attempts: list[tuple[str, datetime | None, datetime | None]] = [
        (record.outcome, record.queued_at, record.finished_at)
        for stage in run.stages
        for record in stage.history
    ]
    attempts += [
        (stage.status, stage.queued_at, stage.finished_at)
        for stage in run.stages
        if stage.attempt > 0 and all(r.attempt != stage.attempt for r in stage.history)
    ]
    resumed = sorted(queued for _, queued, _ in attempts if queued is not None)
    total = 0.0
    for outcome, _, ended in attempts:
        if outcome != "cancelled" or ended is None:
            continue
        after = next((queued for queued in resumed if queued >= ended), None)
        if after is not None:
            total += (after - ended).total_seconds()
    return total


def _bounded(error: str | None) -> str | None:
    """Errors stored before they were bounded at the source are cut on the way out too."""
    return None if error is None else truncate(error, MAX_ERROR_CHARS)


# --- app ---------------------------------------------------------------------------------


def get_coordinator(request: Request) -> Coordinator:
    """The coordinator; while it starts, waits for it (503 if it does not come in time)."""
    startup: Startup = request.app.state.startup
    return startup.get()


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]


def get_champions(request: Request) -> ModelChampions:
    startup: Startup = request.app.state.startup
    startup.get()  # built with the coordinator
    champions: ModelChampions = request.app.state.champions
    return champions


ChampionsDep = Annotated[ModelChampions, Depends(get_champions)]


def create_app(
    settings: CoordinatorSettings | None = None,
    *,
    coordinator: Coordinator | None = None,
    champions: ModelChampions | None = None,
    run_loops: bool = True,
) -> FastAPI:
    """The app for ``settings`` (read from the environment at start-up when None).

    With ``coordinator`` given, the app uses it as is and leaves closing it to the caller;
    ``champions`` likewise (else they are built from the settings, on the coordinator's blob
    store); ``run_loops=False`` leaves consuming, relaying and the watchdog to the caller too."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or CoordinatorSettings()
        auth = Authenticator.from_settings(resolved)

        def build() -> Coordinator:
            running = build_coordinator(resolved)
            observe_last_successes(running.last_successes)
            app.state.champions = champions or build_champions(resolved, running.blobs)
            return running

        def make_loops(running: Coordinator) -> BackgroundLoops | None:
            if not run_loops:
                return None
            return BackgroundLoops(
                running,
                resolved.loop_intervals,
                blob_poller=build_blob_poller(resolved, running),
                blob_poller_interval_s=resolved.blob_poller_interval_s,
            )

        if coordinator is None:
            # Once per process (python -m coordinator did it already: a no-op then).
            configure_from_settings("coordinator", resolved)
            startup = Startup(
                build, make_loops=make_loops, request_wait_s=resolved.startup_request_wait_s
            )
            startup.start()
        else:
            app.state.champions = champions or build_champions(resolved, coordinator.blobs)
            loops = make_loops(coordinator)
            if loops is not None:
                loops.start()
            startup = Startup.of(coordinator, loops)
        app.state.startup = startup
        app.state.auth = auth
        app.state.mlflow_ui_url = dashboard_mlflow_ui_url(resolved)
        secret = resolved.trigger_webhook_secret
        app.state.webhook = WebhookConfig(
            secret=secret.get_secret_value() if secret else None,
            auth=auth,
            role=resolved.trigger_webhook_role,
        )
        try:
            yield
        finally:
            startup.stop()
            if coordinator is None:
                if startup.coordinator is not None:
                    startup.coordinator.close()
                # Here, not after uvicorn.run: uvicorn re-raises SIGTERM once shut down.
                shutdown_telemetry()

    limits = settings or CoordinatorSettings.model_construct()
    app = SecretsHiddenApp(
        title="retrainer coordinator",
        description="Starts ML retraining runs and follows them through their five stages.",
        version="1",
        lifespan=lifespan,
        # Served offline by coordinator/apidocs.py (FastAPI's own pages load from a CDN).
        docs_url=None,
        redoc_url=None,
        # Every route needs a token once authentication is configured, but for the public
        # ones coordinator/auth.py names (probes, dashboard shells, docs, the webhook).
        dependencies=[Depends(authorize)],
    )
    app.add_middleware(UnexpectedErrors)
    # Outside UnexpectedErrors.
    app.add_middleware(
        BodyLimits,
        default=limits.api_max_body_bytes,
        # Event Grid's batches, and groups of up to RETRAINER_GROUP_MAX_MEMBERS members.
        limits={
            WEBHOOK_PATH: limits.trigger_webhook_max_bytes,
            "/run-groups": limits.api_max_group_body_bytes,
        },
    )
    add_common_error_handlers(app, retry_after_s=limits.api_retry_after_s)
    _add_error_handlers(app)
    _add_routes(app)
    _add_model_routes(app)
    _add_data_asset_routes(app)
    _add_schedule_routes(app)
    add_event_routes(app)
    add_dashboard_routes(app)
    add_docs_routes(app)
    return app


# The short ids the CLI and dashboard print (a run's or group's id, first hex digits).
IdPrefix = Annotated[
    str | None,
    Query(
        pattern=r"^(?:[0-9a-fA-F]-?){1,32}$",
        description="only ids starting with these hex digits (a short id)",
    ),
]


RecipeFilter = Annotated[
    str | None, Query(min_length=1, max_length=200, description="only this recipe's runs")
]
EntityFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=MAX_ENTITY_LENGTH, description="only this entity's runs"),
]


def _add_routes(app: FastAPI) -> None:
    @app.post(
        "/runs",
        status_code=HTTPStatus.ACCEPTED,
        response_model=RunOut,
        responses={
            HTTPStatus.OK: {"description": "a run with this correlation_id and body exists"},
            HTTPStatus.CONFLICT: {"description": "a run with this correlation_id asked for else"},
            HTTPStatus.UNPROCESSABLE_ENTITY: {
                "description": "unknown recipe, invalid params or entity, or unusable data"
            },
        },
    )
    def start_run(body: RunCreate, coordinator: CoordinatorDep, response: Response) -> RunOut:
        run, created = coordinator.ensure_run(
            body.correlation_id or uuid4(),
            body.recipe,
            body.data,
            body.params,
            trigger="api",
            entity=body.entity,
            force=body.forced_stages,
        )
        if not created:
            response.status_code = HTTPStatus.OK
        response.headers["Location"] = f"/runs/{run.id}"
        return RunOut.of(run)

    @app.get("/runs", response_model=RunPage)
    def list_runs(
        coordinator: CoordinatorDep,
        status: RunStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        id_prefix: IdPrefix = None,
        recipe: RecipeFilter = None,
        entity: EntityFilter = None,
    ) -> RunPage:
        runs, total = coordinator.list_runs(
            status=status,
            limit=limit,
            offset=offset,
            id_prefix=id_prefix,
            recipe=recipe,
            entity=entity,
        )
        return RunPage(
            runs=[RunSummary.of(run) for run in runs], total=total, limit=limit, offset=offset
        )

    @app.get("/runs/{run_id}", response_model=RunOut, responses={HTTPStatus.NOT_FOUND: {}})
    def get_run(run_id: UUID, coordinator: CoordinatorDep) -> RunOut:
        return RunOut.of(coordinator.get_run(run_id))

    @app.post(
        "/runs/{run_id}/cancel",
        response_model=RunOut,
        responses={HTTPStatus.NOT_FOUND: {}, HTTPStatus.CONFLICT: {}},
    )
    def cancel_run(run_id: UUID, coordinator: CoordinatorDep) -> RunOut:
        return RunOut.of(coordinator.cancel_run(run_id))

    @app.post(
        "/runs/{run_id}/retry",
        status_code=HTTPStatus.ACCEPTED,
        response_model=RunOut,
        responses={HTTPStatus.NOT_FOUND: {}, HTTPStatus.CONFLICT: {}},
    )
    def retry_run(run_id: UUID, coordinator: CoordinatorDep) -> RunOut:
        return RunOut.of(coordinator.retry_run(run_id))

    @app.get(
        "/runs/{run_id}/reports/{stage}/{name}",
        response_class=Response,
        responses={
            HTTPStatus.OK: {"content": {media: {} for media in _REPORT_MEDIA_TYPES.values()}},
            HTTPStatus.NOT_FOUND: {},
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: {},
        },
    )
    def get_report(run_id: UUID, stage: Stage, name: str, coordinator: CoordinatorDep) -> Response:
        """A report a stage wrote beside its output (e.g. aggregation's drift report)."""
        run = coordinator.get_run(run_id)
        state = next((s for s in run.stages if s.stage == stage), None)
        path = None if state is None else _stage_reports(state).get(name)
        if state is None or path is None or state.status != "succeeded" or len(state.outputs) != 1:
            raise ReportNotFound(f"run {run_id} has no {stage} report {name!r}")
        blob = f"{next(iter(state.outputs.values())).rstrip('/')}/{path}"
        try:
            if coordinator.blobs.get_blob_properties(blob).size > MAX_REPORT_BYTES:
                return JSONResponse(
                    {"detail": f"report {name!r} is over {MAX_REPORT_BYTES} bytes"},
                    status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            content = coordinator.blobs.download_blob(blob).data
        except (BlobNotFoundError, InvalidBlobNameError) as exc:
            raise ReportNotFound(f"report {name!r} of run {run_id}: {exc}") from exc
        media_type = _REPORT_MEDIA_TYPES.get(PurePosixPath(path).suffix.lower(), "text/plain")
        return Response(
            content,
            media_type=media_type,
            # A report is data, not part of the app: no scripts, no requests, no sniffing.
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'; "
                "style-src 'unsafe-inline'; img-src data:",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get(
        "/runs/{run_id}/stages/{stage}/attempts/{attempt}/log",
        response_model=AttemptLogOut,
        responses={HTTPStatus.NOT_FOUND: {"description": "no such run or attempt"}},
    )
    def get_attempt_log(
        run_id: UUID,
        stage: Stage,
        attempt: Annotated[int, Path(ge=1, le=10_000)],
        coordinator: CoordinatorDep,
    ) -> AttemptLogOut:
        """A stage attempt's error and the tail of its log (what the attempt logged, written
        by its worker every few seconds while it runs, and a failure's traceback at its end):
        at most MAX_LOG_TAIL_CHARS characters, secrets redacted."""
        run = coordinator.get_run(run_id)
        state = next((s for s in run.stages if s.stage == stage), None)
        record = (
            None
            if state is None
            else next((r for r in state.history if r.attempt == attempt), None)
        )
        outcome: str
        if record is not None:
            outcome, error = record.outcome, record.error
        elif state is not None and 0 < attempt == state.attempt:
            outcome, error = state.status, state.error
        else:
            raise HTTPException(
                HTTPStatus.NOT_FOUND, f"run {run_id} has no {stage} attempt {attempt}"
            )
        log_text: str | None = None
        truncated = False
        with suppress(BlobNotFoundError, InvalidBlobNameError):
            blob = coordinator.blobs.download_blob(failure_log_blob(run_id, stage, attempt))
            # Written bounded by the worker; bounded again here (and redacted) all the same.
            log_text, truncated = log_tail(
                blob.data[-4 * MAX_LOG_TAIL_CHARS :].decode("utf-8", errors="replace")
            )
        return AttemptLogOut(
            run_id=run_id,
            stage=stage,
            attempt=attempt,
            outcome=outcome,
            error=None if error is None else log_tail(error, MAX_ERROR_CHARS)[0],
            log=log_text,
            truncated=truncated,
        )

    @app.get("/config/dashboard", response_model=DashboardConfigOut)
    def dashboard_config(request: Request) -> DashboardConfigOut:
        """What the dashboard needs besides the runs: where the MLflow UI is (for links to
        runs and model versions; null: the dashboard shows their ids as text)."""
        return DashboardConfigOut(mlflow_ui_url=request.app.state.mlflow_ui_url)

    @app.post(
        "/run-groups",
        status_code=HTTPStatus.ACCEPTED,
        response_model=RunGroupOut,
        responses={
            HTTPStatus.UNPROCESSABLE_ENTITY: {
                "description": "no members, too many, a duplicate or bad entity, bad params or "
                "data: nothing started"
            }
        },
    )
    def start_group(
        body: RunGroupCreate, coordinator: CoordinatorDep, response: Response
    ) -> RunGroupOut:
        members = (
            None
            if body.members is None
            else [MemberRequest(m.entity, m.data, m.params) for m in body.members]
        )
        view = coordinator.start_group(
            GroupRequest(
                recipe=body.recipe,
                params=body.params,
                members=members,
                expand=body.expand,
                concurrency=body.concurrency,
                force=forced_stages(body.force),
            )
        )
        response.headers["Location"] = f"/run-groups/{view.group.id}"
        return RunGroupOut.of(view)

    @app.get("/run-groups", response_model=RunGroupPage)
    def list_groups(
        coordinator: CoordinatorDep,
        status: GroupStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        id_prefix: IdPrefix = None,
    ) -> RunGroupPage:
        views, total = coordinator.list_groups(
            status=status, limit=limit, offset=offset, id_prefix=id_prefix
        )
        return RunGroupPage(
            groups=[RunGroupSummary.of(view) for view in views],
            total=total,
            limit=limit,
            offset=offset,
        )

    @app.get(
        "/run-groups/{group_id}", response_model=RunGroupOut, responses={HTTPStatus.NOT_FOUND: {}}
    )
    def get_group(
        group_id: UUID, coordinator: CoordinatorDep, status: RunStatus | None = None
    ) -> RunGroupOut:
        return RunGroupOut.of(coordinator.get_group(group_id, status=status))

    @app.post(
        "/run-groups/{group_id}/cancel",
        response_model=RunGroupOut,
        responses={HTTPStatus.NOT_FOUND: {}, HTTPStatus.CONFLICT: {}},
    )
    def cancel_group(group_id: UUID, coordinator: CoordinatorDep) -> RunGroupOut:
        return RunGroupOut.of(coordinator.cancel_group(group_id))

    @app.post(
        "/run-groups/{group_id}/retry-failed",
        status_code=HTTPStatus.ACCEPTED,
        response_model=RunGroupOut,
        responses={HTTPStatus.NOT_FOUND: {}, HTTPStatus.CONFLICT: {}},
    )
    def retry_group(group_id: UUID, coordinator: CoordinatorDep) -> RunGroupOut:
        return RunGroupOut.of(coordinator.retry_group(group_id))

    @app.get(
        "/healthz",
        responses={HTTPStatus.SERVICE_UNAVAILABLE: {"description": "the start-up failed"}},
    )
    def healthz(request: Request) -> JSONResponse:
        """Alive: answers as soon as the server listens; 503 once the start-up has failed
        for good (restart the process)."""
        startup: Startup = request.app.state.startup
        if startup.status == "failed":
            body = {"status": "failed", "error": startup.error or ""}
            return JSONResponse(body, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={HTTPStatus.SERVICE_UNAVAILABLE: {"model": Readiness}},
    )
    def readyz(request: Request) -> JSONResponse:
        """Ready: the run store answers and the bus loops run. While starting (or after a
        failed start-up) ``status`` is ``starting`` (``failed``) and ``checks.startup`` says
        what it waits for. ``workers``/``workers_warm`` tell the second level, from the
        workers' heartbeats: whether a run would start at once or wait for a warm-up."""
        startup: Startup = request.app.state.startup
        coordinator = startup.coordinator
        if startup.status != "ready" or coordinator is None:
            checks = {"startup": startup.error or startup.status}
            return JSONResponse(
                Readiness(status=startup.status, checks=checks).model_dump(),
                status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            )
        checks = {"database": "ok"}
        try:
            coordinator.check_ready()
        except Exception as exc:
            checks["database"] = f"{type(exc).__name__}: {exc}"
        loops = startup.loops
        if loops is not None:
            # The consumer polls the bus every second or so: its last outcome is the bus's health.
            checks["bus"] = (
                loops.errors.get("consumer")
                or loops.errors.get("relay")
                or loops.errors.get("blob-events")
                or "ok"
            )
            checks["loops"] = "ok" if loops.alive else "a background loop has stopped"
        ready = all(value == "ok" for value in checks.values())
        # Informational: the API is ready (200) whatever the workers do, runs queue meanwhile.
        workers = coordinator.worker_readiness()
        readiness = Readiness(
            status="ready" if ready else "not ready",
            checks=checks,
            workers=workers,
            workers_warm=all(state == "warm" for state in workers.values()),
        )
        return JSONResponse(
            readiness.model_dump(),
            status_code=HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
        )


class DataAssetVersionOut(BaseModel):
    version: str
    reference: str = Field(description="data for POST /runs to train on this version")
    prefix: str = Field(description="the split folder in the blob store")
    path: str = Field(description="where the asset points (Azure ML: a datastore URI)")
    correlation_id: str = Field(description="the run whose split it is")
    created_at: str


class DataAssetVersionsOut(BaseModel):
    name: str
    latest: str
    versions: list[DataAssetVersionOut]


class ScheduleOut(BaseModel):
    name: str
    cron: str
    timezone: str
    recipe: str
    data: str
    params: dict[str, Any]
    entity: str | None
    group: bool = Field(description="each tick starts a run group over data")
    last_tick: datetime | None = Field(
        description="the latest tick acted on (UTC); null until a coordinator has seen it"
    )
    next_tick: datetime = Field(description="UTC; in the past while it is due")

    @classmethod
    def of(cls, view: ScheduleView) -> ScheduleOut:
        schedule = view.schedule
        return cls(
            name=schedule.describe(),
            cron=schedule.cron,
            timezone=schedule.timezone,
            recipe=schedule.recipe,
            data=schedule.data,
            params=schedule.params,
            entity=schedule.entity,
            group=schedule.group is not None,
            last_tick=view.last_tick,
            next_tick=view.next_tick,
        )


class SchedulePage(BaseModel):
    schedules: list[ScheduleOut]


def _add_schedule_routes(app: FastAPI) -> None:
    @app.get("/schedules", response_model=SchedulePage)
    def list_schedules(coordinator: CoordinatorDep) -> SchedulePage:
        """The cron schedules (RETRAINER_SCHEDULES and trigger rules with a schedule): when
        each last acted and when it fires next."""
        return SchedulePage(schedules=[ScheduleOut.of(v) for v in coordinator.list_schedules()])


def _add_data_asset_routes(app: FastAPI) -> None:
    @app.get(
        "/data-assets/{name}",
        response_model=DataAssetVersionsOut,
        responses={
            HTTPStatus.NOT_FOUND: {"description": "no such data asset"},
            HTTPStatus.UNPROCESSABLE_ENTITY: {"description": "not a data asset name"},
        },
    )
    def data_asset_versions(
        name: Annotated[str, Path(min_length=1, max_length=255)], coordinator: CoordinatorDep
    ) -> DataAssetVersionsOut:
        """The versions of a data asset (each a run's split), oldest first."""
        try:
            versions = coordinator.data_asset_versions(name)
        except DataAssetNotFoundError as exc:
            raise HTTPException(HTTPStatus.NOT_FOUND, str(exc)) from None
        except InvalidDataAssetError as exc:
            raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        return DataAssetVersionsOut(
            name=name,
            latest=versions[-1].version,
            versions=[
                DataAssetVersionOut(
                    version=v.version,
                    reference=v.reference,
                    prefix=v.prefix,
                    path=v.path,
                    correlation_id=v.correlation_id,
                    created_at=v.created_at,
                )
                for v in versions
            ],
        )


ModelName = Annotated[str, Path(min_length=1, max_length=256)]
_MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    HTTPStatus.NOT_FOUND: {"description": "no such model version, or no champion"},
    HTTPStatus.SERVICE_UNAVAILABLE: {
        "description": "the registry or blob store is unavailable, or another promotion of the"
        " model held its lease too long: try again"
    },
}


def _add_model_routes(app: FastAPI) -> None:
    @app.get("/models/{name}/champion", response_model=ChampionOut, responses=_MODEL_RESPONSES)
    def get_champion(name: ModelName, champions: ChampionsDep) -> ChampionOut:
        with _model_errors():
            return ChampionOut.of(champions.get_champion(name))

    @app.get("/models/{name}/promotions", response_model=PromotionHistoryOut)
    def get_promotions(name: ModelName, coordinator: CoordinatorDep) -> PromotionHistoryOut:
        """The model's promotions made through this coordinator (tag stages, operators), oldest
        first, from the coordinator's own store: the registry is not asked."""
        history = coordinator.promotions(name)
        return PromotionHistoryOut(
            model_name=name,
            champion=history[-1].version if history else None,
            promotions=[PromotionOut.of(p) for p in history],
        )

    @app.post(
        "/models/{name}/champion", response_model=ChampionChangeOut, responses=_MODEL_RESPONSES
    )
    def promote(
        name: ModelName,
        body: ChampionChangeCreate,
        request: Request,
        champions: ChampionsDep,
        coordinator: CoordinatorDep,
    ) -> ChampionChangeOut:
        """Make a version the model's champion, whatever its metrics: an operator's promote or
        rollback. It waits for a tag stage promoting the same model at the same moment, and
        the tag stages after it compare their candidates with this champion."""
        with _model_errors():
            promotion = champions.promote(
                name, body.version, actor=caller(request, body.requested_by), reason=body.reason
            )
        change = promotion.change
        changed = change.previous_version != body.version
        if changed:
            coordinator.record_promotion(
                PromotionRecord(
                    model_name=name,
                    version=body.version,
                    promoted_at=change.at,
                    run_id=None,
                    actor=change.actor,
                    reason=change.reason,
                    previous_version=change.previous_version,
                )
            )
        return ChampionChangeOut(changed=changed, champion=ChampionOut.of(promotion.champion))


def caller(request: Request, requested_by: str | None) -> str:
    """Who makes a request: the authenticated principal, else what the caller says, marked
    as such, with its address."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return str(principal.subject)
    host = request.client.host if request.client else "unknown"
    return f"{requested_by or 'anonymous'} (unauthenticated, from {host})"


@contextmanager
def _model_errors() -> Iterator[None]:
    # A RetryableError (registry or blob store down, the lease held too long) is the app's
    # common 503 with Retry-After.
    try:
        yield
    except ModelVersionNotFoundError as exc:
        raise HTTPException(HTTPStatus.NOT_FOUND, str(exc)) from None


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CoordinatorUnavailableError)
    def unavailable(_: Request, exc: CoordinatorUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(InvalidRunRequest)
    def invalid_run_request(_: Request, exc: InvalidRunRequest) -> JSONResponse:
        # The same shape as FastAPI's own validation errors, so clients parse one format.
        detail = [
            {
                "loc": ["body", *problem.loc],
                "msg": truncate(problem.msg, 500),
                "type": "invalid_run_request",
            }
            for problem in exc.problems[:100]
        ]
        return JSONResponse({"detail": detail}, status_code=HTTPStatus.UNPROCESSABLE_ENTITY)

    @app.exception_handler(RunNotFound)
    def run_not_found(_: Request, exc: RunNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=HTTPStatus.NOT_FOUND)

    @app.exception_handler(ReportNotFound)
    def report_not_found(_: Request, exc: ReportNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=HTTPStatus.NOT_FOUND)

    @app.exception_handler(GroupNotFound)
    def group_not_found(_: Request, exc: GroupNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=HTTPStatus.NOT_FOUND)

    @app.exception_handler(GroupTransitionError)
    def group_transition(_: Request, exc: GroupTransitionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=HTTPStatus.CONFLICT)

    @app.exception_handler(RunConflict)
    def run_conflict(_: Request, exc: RunConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=HTTPStatus.CONFLICT)

    @app.exception_handler(InvalidTransition)
    def invalid_transition(_: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=HTTPStatus.CONFLICT)
