"""The coordinator's settings: the common ones plus its database, HTTP address, retry policy,
loop intervals and blob triggers, all from ``RETRAINER_*`` environment variables or ``.env``.

The trigger rules themselves (``RETRAINER_TRIGGER_RULES``, ``RETRAINER_TRIGGER_RULES_FILE``)
are common settings: the local blob store's event publisher reads them too."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator

from coordinator.domain import Policy
from coordinator.schedules import Schedule, schedules_of
from coordinator.service import (
    GroupPolicy,
    LoopIntervals,
    RetentionPolicy,
    StoreRetention,
    TriggerPolicy,
)
from shared.settings import CommonSettings
from shared.topology import DUPLICATE_DETECTION_WINDOW_S
from shared.triggers import load_trigger_rules


class CoordinatorSettings(CommonSettings):
    # SQLAlchemy URL, e.g. postgresql+psycopg://user@host:5432/db; default: SQLite in state_dir.
    # A SecretStr: it may hold a password.
    database_url: SecretStr | None = None
    # PostgreSQL with Microsoft Entra authentication: each new connection's password is an
    # access token of DefaultAzureCredential (the coordinator's managed identity).
    database_entra_auth: bool = False
    # A PostgreSQL schema of its own, for a database shared with other applications.
    database_schema: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # How long an idle keep-alive connection stays open. Longer than a client (or a proxy in
    # front) may take between two requests on one connection, else a request sent as the
    # server closes it fails with a connection error (uvicorn's own default is 5 s).
    http_keep_alive_s: float = Field(default=75.0, gt=0)

    # API authentication (coordinator/auth.py): a static bearer token for compose and local
    # stacks, and/or Microsoft Entra ID access tokens of the tenant for the API's audience (its
    # app registration's client id or application id URI) with the app roles runs.read /
    # runs.write. With neither, the server refuses to listen beyond 127.0.0.1.
    api_token: SecretStr | None = None
    auth_tenant_id: str | None = None
    auth_audience: str | None = None
    # The tenant's signing keys; default: login.microsoftonline.com's JWKS for the tenant.
    auth_jwks_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # The MLflow UI the dashboard links runs and model versions to (http(s) only); default:
    # mlflow_tracking_uri when that is an http(s) tracking server (it serves the UI), else none
    # (the dashboard shows the ids as text).
    mlflow_ui_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2000)
    # The API answers while the coordinator connects to its store and bus; a request that
    # needs the coordinator meanwhile waits this long for it, then gets a 503.
    startup_request_wait_s: float = Field(default=30.0, ge=0)

    max_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    queue_timeout_s: float = Field(default=300.0, gt=0)
    run_timeout_s: float = Field(default=900.0, gt=0)
    train_timeout_s: float = Field(default=7200.0, gt=0)

    # The longest the bus consumers wait per receive; None: the bus's idle wait (20 s embedded,
    # where a stop interrupts it; 0.5 s on Service Bus, where it is how long a stop takes).
    consumer_wait_s: float | None = Field(default=None, gt=0)
    # The timed loops are woken by their work and sleep until their next deadline from the
    # store; these are the longest sleeps (for work another coordinator left: LoopIntervals).
    relay_interval_s: float = Field(default=30.0, gt=0)
    watchdog_interval_s: float = Field(default=60.0, gt=0)

    # Blob triggers: a burst of uploads for one run starts it once quiet for debounce_s, at
    # the latest debounce_max_s after its first upload.
    trigger_debounce_s: float = Field(default=5.0, ge=0)
    trigger_debounce_max_s: float = Field(default=300.0, gt=0)
    trigger_interval_s: float = Field(default=30.0, gt=0)
    # How long seen event ids / (blob, etag) pairs are kept for duplicate detection (Event
    # Grid retries for up to 24 h).
    trigger_dedup_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # POST /events/blob: the shared secret, as ?code=... or an aeg-sas-key header, and/or,
    # with Entra ID configured, Event Grid's Entra-authenticated delivery (a token for the
    # API's audience carrying this app role). Neither: every caller (on 127.0.0.1 only).
    trigger_webhook_secret: SecretStr | None = None
    trigger_webhook_role: str = "AzureEventGridSecureWebhookSubscriber"
    # The blob-change poller (shared/blob_poller.py): BlobCreated events for storage without
    # Event Grid (Azurite in docker-compose), from listing the trigger rules' prefixes every
    # interval; "now": blobs already there when a container is first polled start nothing.
    blob_poller: bool = False
    blob_poller_interval_s: float = Field(default=5.0, gt=0)
    blob_poller_lookback_s: float = Field(default=300.0, ge=0)
    blob_poller_start: Literal["now", "beginning"] = "now"
    # Event Grid batches are at most 1 MB.
    trigger_webhook_max_bytes: int = Field(default=1024 * 1024, gt=0)
    # Any other request body (POST /runs: recipe, data prefix and params) is at most this.
    api_max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # POST /run-groups, whose members (up to group_max_members) come in one body.
    api_max_group_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # What a 503 (the run store, bus or blob store down or full) tells the client to wait.
    api_retry_after_s: int = Field(default=5, ge=1)
    # /readyz is false while the SQLite run store's disk has less free space than this.
    min_free_disk_bytes: int = Field(default=32 * 1024 * 1024, ge=0)

    # Cron schedules (coordinator/schedules.py), a JSON list: [{"cron": "0 3 * * *",
    # "recipe": ..., "data": ..., "params": {}, "entity": null, "group": null}]; trigger rules
    # with "schedule" add theirs.
    schedules: list[Schedule] = Field(default_factory=list)

    # Cached stage outputs that no unfinished or recent run and no registered model needs are
    # removed once older than this (coordinator/retention.py); null: never. Checked hourly.
    cache_retention_s: float | None = Field(default=30 * 24 * 3600.0, gt=0)
    cache_retention_interval_s: float = Field(default=3600.0, gt=0)
    # The run store's bookkeeping (coordinator/service.py StoreRetention): published outbox
    # rows, processed-message ids and gone workers' heartbeats older than this are deleted
    # every store_retention_interval_s, then SQLite's WAL is checkpointed (TRUNCATE). At least
    # the bus's duplicate-detection window (600 s), as is trigger_dedup_retention_s.
    store_retention_s: float = Field(default=2 * 24 * 3600.0, gt=0)
    store_retention_interval_s: float = Field(default=3600.0, gt=0)

    @field_validator("store_retention_s", "trigger_dedup_retention_s")
    @classmethod
    def _covers_duplicate_detection(cls, horizon: float) -> float:
        # A message re-sent or redelivered within the bus's window must still be recognised.
        if horizon < DUPLICATE_DETECTION_WINDOW_S:
            raise ValueError(
                f"{horizon:g} s is shorter than the bus's duplicate-detection window "
                f"({DUPLICATE_DETECTION_WINDOW_S:g} s): a message re-sent within that window "
                "would no longer be recognised as processed"
            )
        return horizon

    # Run groups: the most members one group may have, how many are in a stage at once when
    # the request does not say, and how often groups are checked for free slots (a finishing
    # member wakes the check at once).
    group_max_members: int = Field(default=1000, ge=1)
    group_default_concurrency: int = Field(default=4, ge=1)
    group_interval_s: float = Field(default=30.0, gt=0)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.state_dir / 'coordinator.sqlite').resolve()}"

    @property
    def policy(self) -> Policy:
        return Policy(
            max_attempts=self.max_attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            queue_timeout_s=self.queue_timeout_s,
            run_timeout_s=self.run_timeout_s,
            run_timeout_overrides_s={"train": self.train_timeout_s},
        )

    @property
    def loop_intervals(self) -> LoopIntervals:
        return LoopIntervals(
            consumer_wait_s=self.consumer_wait_s or self.idle_receive_wait_s,
            relay_interval_s=self.relay_interval_s,
            watchdog_interval_s=self.watchdog_interval_s,
            trigger_interval_s=self.trigger_interval_s,
            group_interval_s=self.group_interval_s,
        )

    @property
    def retention_policy(self) -> RetentionPolicy:
        return RetentionPolicy(
            max_age_s=self.cache_retention_s, interval_s=self.cache_retention_interval_s
        )

    @property
    def store_retention(self) -> StoreRetention:
        return StoreRetention(
            horizon_s=self.store_retention_s, interval_s=self.store_retention_interval_s
        )

    @property
    def group_policy(self) -> GroupPolicy:
        return GroupPolicy(
            max_members=self.group_max_members,
            default_concurrency=self.group_default_concurrency,
        )

    @property
    def trigger_policy(self) -> TriggerPolicy:
        """Raises ConfigurationError for an unreadable rules file."""
        rules = load_trigger_rules(self.trigger_rules, self.trigger_rules_file)
        return TriggerPolicy(
            rules=rules,
            debounce_s=self.trigger_debounce_s,
            debounce_max_s=self.trigger_debounce_max_s,
            dedup_retention_s=self.trigger_dedup_retention_s,
            schedules=schedules_of(self.schedules, rules),
        )


def dashboard_mlflow_ui_url(settings: CoordinatorSettings) -> str | None:
    """The MLflow UI the dashboard links to (no trailing slash), or None."""
    url = settings.mlflow_ui_url
    tracking = settings.mlflow_tracking_uri or ""
    if url is None and tracking.startswith(("http://", "https://")):
        url = tracking
    if not url:
        return None
    parts = urlsplit(url)
    # Never hand a password in the address (user:password@host) to the browser.
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")).rstrip("/")
