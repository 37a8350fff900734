"""The runtime every stage worker shares.

receive -> (cache check) -> download inputs -> call the stage handler -> upload outputs ->
publish the stage event -> settle the message. It renews the message lock while a stage runs,
dead-letters messages it cannot decode, and runs at most ``max_concurrency`` messages at once.

Cancelling: the coordinator's ``CancelStage`` (topic ``run-control``, one subscription per
stage) sets the ``RecipeContext.cancelled`` event of the attempt if it runs here, so the recipe
stops at its next checkpoint, and is remembered so that a command of that attempt still queued
is dropped unrun. Stopping (SIGTERM): no new message is taken, the stages in flight are asked to
stop at their next checkpoint and their messages are abandoned (redelivered at once, to this
worker's successor or another replica) instead of dying with the process; a stage that does not
stop within ``shutdown_grace_s`` has its message abandoned all the same.

Retry policy lives in the coordinator: a failed stage is reported with ``StageFailed``
(``retryable`` from the error type) and the message is completed; the coordinator decides
whether to send a new attempt. Bus redelivery (lock expiry after a crash) and its
max-delivery-count dead-lettering only cover workers that die mid-stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from shared.blobs.port import BlobProperties, BlobStore, folder_prefix
from shared.blobs.transfer import digest_prefix, download_prefix, upload_directory
from shared.bus.consuming import MALFORMED_MESSAGE, dead_letter, handle_each
from shared.bus.port import MessageBus, ReceivedMessage
from shared.errors import (
    BlobNotFoundError,
    ConfigurationError,
    InvalidBlobNameError,
    MalformedMessageError,
    MessageLockLostError,
    PermanentError,
    RetryableError,
)
from shared.messages import (
    CancelStage,
    RunStage,
    Stage,
    StageFailed,
    StageProgress,
    StageStarted,
    StageSucceeded,
    WorkerHeartbeat,
    decode,
    encode,
)
from shared.recipe import RECIPE_STAGES, Recipe, RecipeContext, RecipeParams
from shared.stage_logs import AttemptLog, failure_log_blob
from shared.telemetry import in_current_trace, stage_span
from shared.topology import (
    CONTROL_TOPIC,
    EVENTS_TOPIC,
    WORKER_SUBSCRIPTION,
    command_topic,
    control_subscription,
)

log = logging.getLogger(__name__)

ARTIFACTS_CONTAINER = "artifacts"
# Cacheable stages write under artifacts/cache/<stage>/<cache_key>.
CACHE_FOLDER = "cache"
MANIFEST = "_manifest.json"
# CancelStage commands taken per receive, and how many cancelled attempts a worker remembers
# (to drop their commands if they arrive later).
CONTROL_BATCH = 20
REMEMBERED_CANCELS = 10_000
# The warm-up thread's nice value: the coordinator and warm workers go first (weight about 3:1);
# 10 (about 9:1) starved the warm-ups behind other users' processes on a shared machine.
WARM_UP_NICE = 5


class BlobChangedError(RetryableError):
    """A blob a stage reads changed between computing its cache key and downloading it."""


def cache_key(
    command: RunStage,
    recipe: Recipe,
    params: RecipeParams,
    input_digests: Mapping[str, str],
    blob_params: Mapping[str, BlobProperties] | None = None,
) -> str:
    """The content hash a cacheable stage's output is stored under: the stage, the recipe's
    name and version, the *parsed* values (defaults filled) of only the params this stage
    reads (``Recipe.stage_params``), its inputs' digests and the (name, etag) of the blobs its
    blob params name (``Recipe.blob_params``). So ``{}`` and the defaults
    spelled out are one entry, and a train-only param change reuses aggregation and split.
    A forced stage (``RunStage.force``) gets a key of its own run: it reuses nothing earlier
    and never overwrites an entry that other runs' lineage may point at."""
    read = recipe.params_read_by(command.stage) if command.stage in RECIPE_STAGES else None
    values = {
        name: value
        for name, value in params.model_dump(mode="json").items()
        if read is None or name in read
    }
    material: dict[str, Any] = {
        "stage": command.stage,
        "recipe": recipe.name,
        "recipe_version": recipe.version,
        "params": values,
        "inputs": dict(input_digests),
    }
    if blob_params:
        material["blob_params"] = {
            name: [blob.name, blob.etag] for name, blob in blob_params.items()
        }
    if command.force:
        material["forced_by"] = str(command.correlation_id)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StageContext:
    command: RunStage
    recipe: Recipe
    params: RecipeParams
    input_dirs: Mapping[str, Path]
    output_dir: Path
    blob_store: BlobStore
    # Where the worker uploads ``output_dir`` (and the manifest) when the handler returns.
    output_prefix: str
    # Handed to the recipe's stage function: cancellation and the cores it may use.
    recipe_context: RecipeContext = field(default_factory=RecipeContext)

    def input_prefix(self, name: str) -> str:
        """The blob prefix of input ``name`` (what ``input_dirs[name]`` is downloaded from)."""
        return folder_prefix(self.command.inputs[name])

    def download_input(self, name: str) -> Path:
        """Fetch input ``name`` into ``input_dirs[name]`` (for ``download_inputs=False``)."""
        download_prefix(self.blob_store, self.input_prefix(name), self.input_dirs[name])
        return self.input_dirs[name]


@dataclass(frozen=True)
class StageResult:
    """What a handler returns.

    ``deferred``: the work was handed to something that finishes later (an Azure ML job); the
    worker uploads nothing and publishes no ``StageSucceeded``, and whoever follows the work
    writes the manifest under ``output_prefix`` and publishes the stage's outcome.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    deferred: bool = False


StageHandler = Callable[[StageContext], StageResult]


@dataclass(frozen=True)
class StageSpec:
    """What a stage reads, what it produces and whether its output may be reused.

    ``inputs`` are keys of the command's ``inputs``; each is downloaded to its own directory.
    A cacheable stage's output is stored under a content hash of (stage, recipe version,
    params, input digests), so a retry or re-run with unchanged inputs skips the work.
    ``download_inputs=False`` leaves fetching to the handler (``StageContext.download_input``),
    for one that may hand the blob prefixes to remote compute instead. ``background`` loops
    run in their own threads beside the receive loops until the worker stops (the event).
    ``on_cancel`` is called with every ``CancelStage`` for this stage, after the attempt's
    ``RecipeContext`` was cancelled (train: stop an Azure ML job or a training subprocess).
    ``after_success`` sees the success event of every attempt that succeeds here, a cache hit
    too, and returns the event to publish (split: registers the output as a data-asset
    version and names it in the details); what it raises fails the attempt like the stage.
    ``warm_up`` callables run once when the worker starts, before it takes a message or
    reports itself alive (heavy imports, a tracking store's set-up), so that the first run
    does not pay them; one that fails is logged and the first message meets the problem.
    """

    stage: Stage
    inputs: tuple[str, ...]
    output: str
    handler: StageHandler
    cacheable: bool = True
    download_inputs: bool = True
    background: tuple[Callable[[threading.Event], None], ...] = ()
    on_cancel: Callable[[CancelStage], object] | None = None
    after_success: Callable[[RunStage, Recipe, StageSucceeded], StageSucceeded] | None = None
    warm_up: tuple[Callable[[], object], ...] = ()


@dataclass
class _Attempt:
    """A stage attempt in flight here: what a cancel or a shutdown needs to reach it."""

    message: ReceivedMessage
    context: RecipeContext
    renewer: _LockRenewer | None = None
    # Set by a CancelStage (the run was cancelled), as opposed to the worker stopping.
    cancel_requested: bool = False
    # Completed or abandoned: nothing more may be published or settled for it.
    settled: bool = False
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    def __init__(
        self,
        spec: StageSpec,
        *,
        bus: MessageBus,
        blob_store: BlobStore,
        recipe_lookup: Callable[[str], Recipe],
        lock_duration_s: float,
        max_concurrency: int = 1,
        receive_wait_s: float = 0.5,
        work_dir: Path | None = None,
        health_file: Path | None = None,
        name: str | None = None,
        stage_max_workers: int | None = None,
        shutdown_grace_s: float = 5.0,
        heartbeat_s: float | None = None,
        attempt_log_s: float = 3.0,
    ) -> None:
        """``stage_max_workers``: cores one stage may use (``RecipeContext.max_workers``);
        default: the machine's cores shared among ``max_concurrency`` stages.
        ``shutdown_grace_s``: how long ``run_forever`` waits, once stopped, for the stages in
        flight to reach a checkpoint before it abandons their messages and returns.
        ``heartbeat_s``: ``run_forever`` sends a ``WorkerHeartbeat`` this often (None: never),
        so the coordinator knows the stage has a live worker and whether it is busy.
        ``attempt_log_s``: how often a running attempt's new log lines are written to its log
        blob (the dashboard's live tail)."""
        self.spec = spec
        self._bus = bus
        self._blobs = blob_store
        self._recipe_lookup = recipe_lookup
        self._lock_duration_s = lock_duration_s
        self._max_concurrency = max_concurrency
        self._receive_wait_s = receive_wait_s
        self._work_dir = work_dir
        self._health_file = health_file
        self.name = name or f"{spec.stage}@{socket.gethostname()}"
        self._stage_max_workers = stage_max_workers or max(
            1, (os.cpu_count() or 1) // max_concurrency
        )
        self._shutdown_grace_s = shutdown_grace_s
        self._attempt_log_s = attempt_log_s
        self._stopping = threading.Event()
        # Set once the warm-up is over: heartbeats stop saying ``warming``.
        self.warm = threading.Event()
        # Set when the warm-up thread ends or the worker stops: ``warm_up`` stops waiting.
        self._warm_up_over = threading.Event()
        # Wakes the heartbeat loop before its interval: the warm-up ended, or the worker stops.
        self._beat_now = threading.Event()
        # Each attempt in flight, so that a cancel or a shutdown can reach it.
        self._in_flight: dict[tuple[UUID, int], _Attempt] = {}
        # Attempts cancelled here, in order: a command of one arriving later is not run.
        self._cancelled: OrderedDict[tuple[UUID, int], None] = OrderedDict()
        self._in_flight_lock = threading.Lock()
        self._heartbeat_s = heartbeat_s
        # This process's id in heartbeats (two replicas may share a name).
        self.instance_id = uuid.uuid4()
        self._heartbeats_sent = 0
        # Per receive loop (thread id): since when (monotonic) its receives came back empty;
        # None once it took a message.
        self._idle_since: dict[int, float | None] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Process messages until ``stop()`` or SIGTERM/SIGINT. Then the stages in flight are
        cancelled and get ``shutdown_grace_s`` to reach a checkpoint; a message still held
        after that is abandoned (redelivered), so no stage dies silently with the process."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        threads = []
        if self._heartbeat_s is not None:
            # Beating during the warm-up too: the coordinator knows the stage has a worker
            # on its way (``warming``), and hears at once when it is warm.
            threads.append(
                threading.Thread(
                    target=self._heartbeat_loop, name=f"{self.name}-heartbeat", daemon=True
                )
            )
            threads[0].start()
        self.warm_up()
        if self._stopping.is_set():
            for thread in threads:
                thread.join(self._receive_wait_s)
            log.info("%s worker %s stopped before it took a message", self.spec.stage, self.name)
            return
        log.info("%s worker %s listening on %s", self.spec.stage, self.name, self.topic)
        loops: list[Callable[[], None]] = [self._loop] * self._max_concurrency
        loops.append(self._control_loop)
        loops += [functools.partial(loop, self._stopping) for loop in self.spec.background]
        started = [
            threading.Thread(target=loop, name=f"{self.name}-{i}", daemon=True)
            for i, loop in enumerate(loops)
        ]
        for thread in started:
            thread.start()
        threads += started
        self._stopping.wait()
        # Idle receive loops return now (where the bus can cut a wait short, else within one
        # receive wait); busy ones when their stage stops.
        self._bus.interrupt_receives()
        with self._in_flight_lock:
            in_flight = list(self._in_flight.values())
        for attempt in in_flight:
            attempt.context.cancelled.set()
        deadline = time.monotonic() + max(self._shutdown_grace_s, self._receive_wait_s)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        # The bus object may serve its owner on (abandoning below, a test reading queues).
        self._bus.resume_receives()
        with self._in_flight_lock:
            in_flight = list(self._in_flight.values())
        for attempt in in_flight:
            self._abandon(attempt, f"still running {self._shutdown_grace_s:g} s after the stop")
        log.info("%s worker %s stopped", self.spec.stage, self.name)

    def warm_up(self) -> float:
        """Run the spec's ``warm_up`` callables (before the first receive, so before the
        health file says this worker is alive); returns the seconds they took.

        They run in a thread of their own at a low CPU priority (``WARM_UP_NICE``, Linux: a
        thread's own nice value): the coordinator's start-up and the stages of workers already
        warm go first, so the warm-ups of a whole stack do not delay its API's readiness. A
        stop ends the wait at once: nothing was taken yet, so there is nothing to finish (the
        process exits with the import where it is)."""
        started = time.monotonic()
        if self.spec.warm_up:
            thread = threading.Thread(
                target=self._run_warm_up, name=f"{self.name}-warm-up", daemon=True
            )
            thread.start()
            self._warm_up_over.wait()
            if self._stopping.is_set():
                log.info("%s worker %s stopped while warming up", self.spec.stage, self.name)
                return time.monotonic() - started
            log.info(
                "%s worker %s warmed up in %.2f s",
                self.spec.stage,
                self.name,
                time.monotonic() - started,
            )
        if not self._stopping.is_set():
            self.warm.set()
            self._beat_now.set()
        return time.monotonic() - started

    def _run_warm_up(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_UP_NICE)
        try:
            for warm in self.spec.warm_up:
                if self._stopping.is_set():
                    break
                try:
                    warm()
                except Exception:
                    log.warning("%s warm-up %r failed", self.spec.stage, warm, exc_info=True)
        finally:
            self._warm_up_over.set()

    def stop(self) -> None:
        self._stopping.set()
        self._warm_up_over.set()
        self._beat_now.set()

    def _on_signal(self, *_: object) -> None:
        self.stop()

    def close(self) -> None:
        self._bus.close()

    def cancel_stage(self, correlation_id: UUID, attempt: int) -> bool:
        """Ask the recipe of that attempt, if it runs here, to stop at its next checkpoint;
        a command of that attempt received later is dropped. Returns whether it ran here."""
        key = (correlation_id, attempt)
        with self._in_flight_lock:
            self._cancelled[key] = None
            while len(self._cancelled) > REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
            running = self._in_flight.get(key)
            if running is not None:
                running.cancel_requested = True
        if running is None:
            return False
        running.context.cancelled.set()
        return True

    def receive_control(self, *, max_wait_s: float | None = None) -> int:
        """Receive ``CancelStage`` commands for this stage and obey them; returns how many
        messages were handled."""
        wait_s = self._receive_wait_s if max_wait_s is None else max_wait_s
        return receive_cancels(self._bus, self.spec.stage, self._on_cancel, max_wait_s=wait_s)

    def _on_cancel(self, request: CancelStage) -> None:
        if request.stage != self.spec.stage:
            return
        if self.cancel_stage(request.correlation_id, request.attempt):
            log.info(
                "cancelling %s of run %s attempt %s: %s",
                request.stage,
                request.correlation_id,
                request.attempt,
                request.reason,
            )
        if self.spec.on_cancel is not None:
            self.spec.on_cancel(request)

    @property
    def topic(self) -> str:
        return command_topic(self.spec.stage)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.process_next()
            except Exception:
                # One bad receive (bus busy, disk hiccup) must not kill the worker.
                log.exception("%s worker loop error", self.spec.stage)
                self._stopping.wait(1.0)

    def _control_loop(self) -> None:
        # A waiting receive: on the embedded bus a CancelStage's doorbell wakes it, and
        # otherwise it costs nothing.
        while not self._stopping.is_set():
            try:
                self.receive_control()
            except Exception:
                log.exception("%s worker control loop error", self.spec.stage)
                self._stopping.wait(1.0)

    def _heartbeat_loop(self) -> None:
        assert self._heartbeat_s is not None
        while not self._stopping.is_set():
            try:
                self.send_heartbeat()
            except Exception as exc:
                log.warning("%s worker could not send its heartbeat: %s", self.spec.stage, exc)
            self._beat_now.wait(self._heartbeat_s)
            self._beat_now.clear()

    def heartbeat(self) -> WorkerHeartbeat:
        """This worker's state now: its slots, how many are busy, how long it has been idle."""
        now = time.monotonic()
        with self._in_flight_lock:
            busy = len(self._in_flight)
            idle = [now - since for since in self._idle_since.values() if since is not None]
        self._heartbeats_sent += 1
        return WorkerHeartbeat(
            correlation_id=self.instance_id,
            worker=self.name,
            stage=self.spec.stage,
            interval_s=self._heartbeat_s or 1.0,
            slots=self._max_concurrency,
            busy=busy,
            idle_s=max(idle) if idle else None,
            sequence=self._heartbeats_sent,
            warming=not self.warm.is_set(),
        )

    def send_heartbeat(self) -> None:
        self._bus.send_messages(EVENTS_TOPIC, [encode(self.heartbeat())])

    def process_next(self) -> bool:
        """Receive and process at most one message; returns whether one was processed."""
        # Before the receive too: an idle receive may wait long, and the first touch is what
        # says the worker is ready (``retrainer up``).
        self._beat()
        loop = threading.get_ident()
        with self._in_flight_lock:
            if self._idle_since.get(loop) is None:
                # A free slot, looking for something to take (a receive waits long when idle,
                # so a heartbeat sent meanwhile must already count it as idle).
                self._idle_since[loop] = time.monotonic()
        messages = self._bus.receive_messages(
            self.topic, WORKER_SUBSCRIPTION, max_wait_time=self._receive_wait_s
        )
        if messages:
            with self._in_flight_lock:
                self._idle_since[loop] = None
        self._beat()
        return bool(handle_each(self._bus, messages, self._take, consumer=self.name))

    def _take(self, message: ReceivedMessage) -> None:
        if self._stopping.is_set():
            # Stopped while this receive waited: the next worker takes it at once.
            self._bus.abandon_message(message)
            return
        self._process(message)

    def _beat(self) -> None:
        if self._health_file is not None:
            self._health_file.touch()

    # -- one message -----------------------------------------------------------------------

    def _process(self, message: ReceivedMessage) -> None:
        try:
            command = decode(message.body, message.application_properties)
            if not isinstance(command, RunStage) or command.stage != self.spec.stage:
                raise MalformedMessageError(
                    f"expected a run_stage command for {self.spec.stage}, got {command!r}"
                )
        except MalformedMessageError as exc:
            dead_letter(self._bus, message, reason=MALFORMED_MESSAGE, description=str(exc))
            return
        key = (command.correlation_id, command.attempt)
        attempt = _Attempt(message, RecipeContext(max_workers=self._stage_max_workers))
        with self._in_flight_lock:
            cancelled = key in self._cancelled
            if not cancelled:
                self._in_flight[key] = attempt
        if cancelled:
            log.info(
                "dropping %s of run %s attempt %s: cancelled before it started",
                command.stage,
                command.correlation_id,
                command.attempt,
            )
            self._bus.complete_message(message)
            return
        try:
            with stage_span(command, enqueued_time=message.enqueued_time, worker=self.name) as span:
                event = self._handle(attempt, command)
                if attempt.abandoned:
                    span.abandoned()
                else:
                    span.finish(event)
        finally:
            with self._in_flight_lock:
                del self._in_flight[key]

    def _handle(self, attempt: _Attempt, command: RunStage) -> StageSucceeded | StageFailed | None:
        """StageStarted, the stage, its outcome event, complete; returns the outcome event
        (None when the handler deferred the work or the message was abandoned)."""
        message = attempt.message
        self._publish(
            StageStarted(
                correlation_id=command.correlation_id,
                traceparent=command.traceparent,
                stage=command.stage,
                attempt=command.attempt,
                worker=self.name,
                delivery_count=message.delivery_count,
            )
        )
        renewer = _LockRenewer(self._bus, message, self._lock_duration_s, on_renewed=self._beat)
        attempt.renewer = renewer
        attempt_log = AttemptLog(
            functools.partial(
                self._blobs.upload_blob,
                failure_log_blob(command.correlation_id, command.stage, command.attempt),
            ),
            interval_s=self._attempt_log_s,
        )
        with renewer, attempt_log:
            started = time.monotonic()
            try:
                event: StageSucceeded | StageFailed | None = self._run_stage(
                    command, attempt.context
                )
            except Exception as exc:
                if attempt.context.cancelled.is_set() and not attempt.cancel_requested:
                    # Stopped because this worker is stopping, not the run: redo it elsewhere.
                    self._abandon(attempt, f"{type(exc).__name__}: {exc}")
                    return None
                event = failed_event(command, exc)
                attempt_log.finish(exc)
                log.log(
                    logging.WARNING
                    if event.retryable or attempt.cancel_requested
                    else logging.ERROR,
                    "%s failed for run %s attempt %s: %s",
                    command.stage,
                    command.correlation_id,
                    command.attempt,
                    exc,
                    exc_info=event.retryable,
                )
            else:
                if event is None:
                    # Deferred: the job's follower keeps the log the job leaves.
                    attempt_log.stop()
                else:
                    attempt_log.finish()
                if event is not None:
                    event = event.model_copy(update={"duration_s": time.monotonic() - started})
            if event is not None:
                # How many deliveries the attempt took: a worker that died mid-stage shows.
                event = event.model_copy(update={"delivery_count": message.delivery_count})
        with attempt.lock:
            if attempt.settled:
                log.info(
                    "%s of run %s attempt %s ended after its message was abandoned",
                    command.stage,
                    command.correlation_id,
                    command.attempt,
                )
                return None
            attempt.settled = True
            if event is not None:
                self._publish(event)
            try:
                self._bus.complete_message(message)
            except MessageLockLostError:
                # The event is out and de-duplicated by message id; a redelivery hits the cache.
                log.warning("lock lost before completing %s", message.message_id)
        return event

    def _abandon(self, attempt: _Attempt, why: str) -> None:
        """Give the attempt's message back to the bus (delivered again at once) and make sure
        nothing more is published or settled for it."""
        with attempt.lock:
            if attempt.settled:
                return
            attempt.settled = attempt.abandoned = True
            if attempt.renewer is not None:
                attempt.renewer.stop()
            log.warning(
                "%s worker stopping: abandoned message %s (%s); it will be delivered again",
                self.spec.stage,
                attempt.message.message_id,
                why,
            )
            try:
                self._bus.abandon_message(attempt.message)
            except MessageLockLostError:
                log.warning("lock on %s lost before abandoning it", attempt.message.message_id)

    def _run_stage(self, command: RunStage, context: RecipeContext) -> StageSucceeded | None:
        """The stage's success event, or None when the handler deferred the work."""
        recipe = self._recipe_lookup(command.recipe)
        params = recipe.parse_params(command.params)
        missing = [name for name in self.spec.inputs if name not in command.inputs]
        if missing:
            raise MalformedMessageError(f"{command.stage} command lacks inputs {missing}")
        blob_params = self._blob_params(command, recipe, params)
        output_prefix = self._output_prefix(command, recipe, params, blob_params)
        # A forced stage writes under its own key (cache_key) and reads no earlier output.
        cached = self._read_manifest(output_prefix)
        if cached is not None:
            log.info(
                "%s cache hit for run %s: %s", command.stage, command.correlation_id, output_prefix
            )
            return self._after_success(
                command, recipe, self._succeeded(command, output_prefix, cached, cached=True)
            )

        with tempfile.TemporaryDirectory(
            prefix=f"retrainer-{command.stage}-", dir=self._work_dir
        ) as tmp:
            root = Path(tmp)
            input_dirs = {name: root / "inputs" / name for name in self.spec.inputs}
            output_dir = root / "outputs"
            output_dir.mkdir()
            ctx = StageContext(
                command,
                recipe,
                params,
                input_dirs,
                output_dir,
                self._blobs,
                output_prefix,
                # The attempt's context (its cancellation), with this stage's blob params.
                dataclasses.replace(
                    context, blob_inputs=self._download_blob_params(blob_params, root / "params")
                ),
            )
            if self.spec.download_inputs:
                for name in self.spec.inputs:
                    ctx.download_input(name)
            context.check_cancelled()
            result = self.spec.handler(ctx)
            if result.deferred:
                log.info(
                    "%s deferred for run %s: %s",
                    command.stage,
                    command.correlation_id,
                    result.details,
                )
                # Where the work went (e.g. the Azure ML job), for the run's record meanwhile.
                self._publish(
                    StageProgress(
                        correlation_id=command.correlation_id,
                        traceparent=command.traceparent,
                        stage=command.stage,
                        attempt=command.attempt,
                        details=result.details,
                    )
                )
                return None
            upload_directory(self._blobs, output_dir, output_prefix)
        manifest = write_manifest(
            self._blobs, output_prefix, metrics=result.metrics, details=result.details
        )
        return self._after_success(
            command, recipe, self._succeeded(command, output_prefix, manifest, cached=False)
        )

    def _after_success(
        self, command: RunStage, recipe: Recipe, event: StageSucceeded
    ) -> StageSucceeded:
        if self.spec.after_success is None:
            return event
        return self.spec.after_success(command, recipe, event)

    def _blob_params(
        self, command: RunStage, recipe: Recipe, params: RecipeParams
    ) -> dict[str, BlobProperties]:
        """The blobs this stage's blob params name (``Recipe.blob_params``), by param."""
        if command.stage not in RECIPE_STAGES:
            return {}
        found = {}
        for name in recipe.blob_params_read_by(command.stage):
            value = getattr(params, name)
            if value is None:
                continue
            try:
                found[name] = self._blobs.get_blob_properties(str(value))
            except (BlobNotFoundError, InvalidBlobNameError) as exc:
                raise ConfigurationError(f"param {name!r}: {exc}") from exc
        return found

    def _download_blob_params(
        self, blobs: Mapping[str, BlobProperties], dest: Path
    ) -> dict[str, Path]:
        paths = {}
        for name, properties in blobs.items():
            content = self._blobs.download_blob(properties.name)
            if content.properties.etag != properties.etag:
                # The cache key holds the old etag: a retry keys the new content correctly.
                raise BlobChangedError(f"param {name!r}: blob {properties.name!r} changed")
            path = dest / name / properties.name.rsplit("/", 1)[-1]
            path.parent.mkdir(parents=True)
            path.write_bytes(content.data)
            paths[name] = path
        return paths

    def _output_prefix(
        self,
        command: RunStage,
        recipe: Recipe,
        params: RecipeParams,
        blob_params: Mapping[str, BlobProperties] | None = None,
    ) -> str:
        if not self.spec.cacheable:
            return (
                f"{ARTIFACTS_CONTAINER}/runs/{command.correlation_id}/"
                f"{command.stage}/attempt-{command.attempt}"
            )
        digests = {
            name: digest_prefix(self._blobs, folder_prefix(command.inputs[name]))
            for name in self.spec.inputs
        }
        key = cache_key(command, recipe, params, digests, blob_params)
        return f"{ARTIFACTS_CONTAINER}/{CACHE_FOLDER}/{command.stage}/{key}"

    def _read_manifest(self, output_prefix: str) -> dict[str, Any] | None:
        try:
            content = self._blobs.download_blob(f"{output_prefix}/{MANIFEST}")
        except BlobNotFoundError:
            return None
        manifest: dict[str, Any] = json.loads(content.data)
        return manifest

    def _succeeded(
        self, command: RunStage, output_prefix: str, manifest: Mapping[str, Any], *, cached: bool
    ) -> StageSucceeded:
        return succeeded_event(command, self.spec.output, output_prefix, manifest, cached=cached)

    def _publish(self, event: StageStarted | StageProgress | StageSucceeded | StageFailed) -> None:
        # In the stage span's trace context, so the coordinator's span is its child.
        self._bus.send_messages(EVENTS_TOPIC, [encode(in_current_trace(event))])


class _LockRenewer:
    """Keeps a message's peek-lock alive while a long stage runs."""

    def __init__(
        self,
        bus: MessageBus,
        message: ReceivedMessage,
        lock_duration_s: float,
        *,
        on_renewed: Callable[[], None],
    ) -> None:
        self._bus = bus
        self._on_renewed = on_renewed
        self._message = message
        self._interval = max(lock_duration_s / 3, 0.05)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _renew(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self._bus.renew_message_lock(self._message)
                self._on_renewed()
            except MessageLockLostError:
                log.warning("lock lost on %s; another worker may redo it", self._message.message_id)
                return
            except Exception:
                log.exception("renewing the lock on %s failed", self._message.message_id)


def receive_cancels(
    bus: MessageBus,
    stage: Stage,
    on_cancel: Callable[[CancelStage], object],
    *,
    max_wait_s: float,
) -> int:
    """Receive from ``run-control``/``stage``: ``on_cancel`` for each ``CancelStage`` (then the
    message is completed), dead-letter anything else. Returns how many messages were handled."""
    messages = bus.receive_messages(
        CONTROL_TOPIC,
        control_subscription(stage),
        max_message_count=CONTROL_BATCH,
        max_wait_time=max_wait_s,
    )

    def handle(message: ReceivedMessage) -> None:
        try:
            request = decode(message.body, message.application_properties)
            if not isinstance(request, CancelStage):
                raise MalformedMessageError(f"expected cancel_stage, got {request!r}")
        except MalformedMessageError as exc:
            dead_letter(bus, message, reason=MALFORMED_MESSAGE, description=str(exc))
            return
        on_cancel(request)
        bus.complete_message(message)

    return handle_each(bus, messages, handle, consumer=f"{stage} run-control")


def write_manifest(
    blob_store: BlobStore,
    output_prefix: str,
    *,
    metrics: Mapping[str, float],
    details: Mapping[str, Any],
) -> dict[str, Any]:
    """Mark ``output_prefix`` complete; written after everything else under it."""
    manifest = {"metrics": dict(metrics), "details": dict(details)}
    blob_store.upload_blob(
        f"{output_prefix}/{MANIFEST}", json.dumps(manifest, sort_keys=True).encode()
    )
    return manifest


def succeeded_event(
    command: RunStage,
    output_name: str,
    output_prefix: str,
    manifest: Mapping[str, Any],
    *,
    cached: bool = False,
) -> StageSucceeded:
    return StageSucceeded(
        correlation_id=command.correlation_id,
        traceparent=command.traceparent,
        stage=command.stage,
        attempt=command.attempt,
        outputs={output_name: output_prefix},
        metrics=manifest.get("metrics", {}),
        details=manifest.get("details", {}),
        cached=cached,
    )


def failed_event(command: RunStage, exc: BaseException) -> StageFailed:
    """The ``StageFailed`` an exception stands for: retryable unless it is a
    ``PermanentError`` or invalid params."""
    return StageFailed(
        correlation_id=command.correlation_id,
        traceparent=command.traceparent,
        stage=command.stage,
        attempt=command.attempt,
        error=_describe(exc),
        error_type=type(exc).__name__,
        retryable=not isinstance(exc, PermanentError | ValidationError),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}"
            for err in exc.errors()
        )
        return f"invalid params: {problems}"
    return str(exc) or type(exc).__name__
