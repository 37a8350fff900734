"""Changing a model's champion: one writer per model name at a time.

Every change of a model's ``champion`` alias — the tag stage's promotion of a new version and
an operator's manual promote or rollback — goes through ``change_champion``. It holds the
model's *promotion lease* (a blob lease on ``locks/models/<sha256 of the name>``, in
the same blob store the workers share: Azure Blob Storage's own leases, or the local store's
equivalent) while it reads the champion, decides and writes. So however many tag workers run,
no two of them decide on the same champion, and after any interleaving one version holds the
alias and ``best_model=true``: the best of those that passed the gate, if nobody overrode it by
hand. The decision itself is a plain function of the champion it is given
(``services.tag.decide_promotion`` for the tag stage).

The lease lasts ``lease_s`` and is renewed every third of that while the holder works; a
holder that dies leaves it to expire. Waiting for it polls (Azure has no lease queue) with a
growing pause, up to ``wait_s``, after which the caller gets a retryable ``PromotionBusyError``.
A registry write that collided with another one (``RegistryConflictError``) is made again under
the same lease. The holder renews the lease right before it writes and again after: if it
was lost meanwhile (the holder stalled for longer than the lease and someone else took it),
the change fails with a retryable ``BlobLeaseLostError`` instead of writing unguarded, or is
reported failed, so that the tag stage runs again and re-decides on what is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.blobs.port import MAX_LEASE_S, MIN_LEASE_S, BlobStore
from shared.errors import (
    BlobExistsError,
    BlobLeasedError,
    BlobLeaseLostError,
    BlobNotFoundError,
    RetrainerError,
    RetryableError,
)
from shared.tracking import ModelRegistry, ModelVersionRecord, RegistryConflictError

log = logging.getLogger(__name__)

LEASES_PREFIX = "locks/models"

# Who, when and why, on the version that became champion.
PROMOTED_BY_TAG = "promoted_by"
PROMOTED_AT_TAG = "promoted_at"
PROMOTION_REASON_TAG = "promotion_reason"
PREVIOUS_CHAMPION_TAG = "previous_champion"


class PromotionBusyError(RetryableError):
    """Another holder kept the model's promotion lease for longer than the caller waits."""


@dataclass(frozen=True)
class Promotion:
    """A decision: make the candidate the champion or not, and why."""

    promote: bool
    reason: str


@dataclass(frozen=True)
class ChampionChange:
    """What ``change_champion`` did."""

    model_name: str
    candidate_version: str
    promoted: bool
    reason: str
    champion_version: str | None
    previous_version: str | None
    actor: str
    at: datetime


@dataclass(frozen=True)
class PromotionOptions:
    lease_s: int = 30
    wait_s: float = 300.0
    # The first pause between two tries for a held lease; it doubles up to max_poll_s.
    poll_s: float = 0.05
    max_poll_s: float = 1.0
    conflict_attempts: int = 5

    def __post_init__(self) -> None:
        if not MIN_LEASE_S <= self.lease_s <= MAX_LEASE_S:
            raise ValueError(f"lease_s must be {MIN_LEASE_S} to {MAX_LEASE_S} seconds")
        if self.wait_s < 0 or self.poll_s <= 0 or self.max_poll_s < self.poll_s:
            raise ValueError("wait_s >= 0 and 0 < poll_s <= max_poll_s")
        if self.conflict_attempts < 1:
            raise ValueError("conflict_attempts must be at least 1")


Decide = Callable[[ModelVersionRecord | None], Promotion]


def change_champion(
    registry: ModelRegistry,
    blobs: BlobStore,
    name: str,
    version: str,
    decide: Decide,
    *,
    actor: str,
    options: PromotionOptions | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChampionChange:
    """Under the model's promotion lease: read the champion, ``decide`` on ``version`` and,
    if it says so, make ``version`` the champion, recording ``actor``, the time and the
    reason on it."""
    options = options or PromotionOptions()
    with model_lease(blobs, name, options) as lease:
        attempt = 1
        while True:
            try:
                return _change(registry, lease, name, version, decide, actor, clock)
            except RegistryConflictError as exc:
                if attempt >= options.conflict_attempts:
                    raise
                attempt += 1
                log.warning("promoting %s v%s collided (%s); trying again", name, version, exc)


def _change(
    registry: ModelRegistry,
    lease: ModelLease,
    name: str,
    version: str,
    decide: Decide,
    actor: str,
    clock: Callable[[], datetime],
) -> ChampionChange:
    champion = registry.get_champion(name)
    decision = decide(champion)
    previous = champion.version if champion else None
    at = clock()
    if decision.promote:
        lease.check()  # renewed: a full lease_s ahead for the writes
        # The champion promoted again (a retried tag stage): keep its first who/when/why,
        # only repair the flags.
        tags = (
            {}
            if previous == version
            else {
                PROMOTED_BY_TAG: actor,
                PROMOTED_AT_TAG: at.isoformat(),
                PROMOTION_REASON_TAG: decision.reason,
                PREVIOUS_CHAMPION_TAG: previous or "",
            }
        )
        registry.promote(name, version, tags=tags)
    lease.check()
    return ChampionChange(
        model_name=name,
        candidate_version=version,
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=version if decision.promote else previous,
        previous_version=previous,
        actor=actor,
        at=at,
    )


def lease_blob_name(model_name: str) -> str:
    """Hashed: a model name may hold characters (or a length) a blob name may not."""
    return f"{LEASES_PREFIX}/{hashlib.sha256(model_name.encode()).hexdigest()}"


class ModelLease:
    """A held promotion lease, renewed on a thread of its own until ``release``."""

    def __init__(self, blobs: BlobStore, blob: str, lease_id: str, lease_s: int) -> None:
        self._blobs = blobs
        self._blob = blob
        self._lease_id = lease_id
        self._lease_s = lease_s
        self._lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease {blob}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Renew the lease now; raises BlobLeaseLostError if it is no longer ours (it expired
        while its holder stalled, and someone else took it)."""
        if self._lost:
            raise BlobLeaseLostError(self._blob)
        try:
            self._blobs.renew_blob_lease(self._blob, self._lease_id)
        except BlobLeaseLostError:
            self._lost = True
            raise

    def release(self) -> None:
        self._done.set()
        self._thread.join()
        try:
            self._blobs.release_blob_lease(self._blob, self._lease_id)
        except RetrainerError as exc:  # it expires by itself
            log.warning("releasing the lease on %s failed: %s", self._blob, exc)

    def _renew(self) -> None:
        while not self._done.wait(self._lease_s / 3):
            try:
                self.check()
            except BlobLeaseLostError:
                return
            except RetrainerError as exc:
                log.warning("renewing the lease on %s failed: %s", self._blob, exc)


@contextmanager
def model_lease(blobs: BlobStore, name: str, options: PromotionOptions) -> Iterator[ModelLease]:
    """Hold model ``name``'s promotion lease for the block; raises PromotionBusyError after
    waiting ``options.wait_s`` for it."""
    blob = lease_blob_name(name)
    deadline = time.monotonic() + options.wait_s
    pause = options.poll_s
    while True:
        try:
            lease_id = blobs.acquire_blob_lease(blob, duration_s=options.lease_s)
            break
        except BlobNotFoundError:
            # The model's first promotion: create the blob to lease (whoever creates it first).
            with suppress(BlobExistsError, BlobLeasedError):
                blobs.upload_blob(blob, json.dumps({"model_name": name}).encode(), overwrite=False)
        except BlobLeasedError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PromotionBusyError(
                    f"model {name!r} is being promoted by someone else: its promotion lease "
                    f"({blob}) stayed taken for {options.wait_s:g} s"
                ) from None
            # Jittered, so waiters that woke together do not ask in step.
            time.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(pause * 2, options.max_poll_s)
    lease = ModelLease(blobs, blob, lease_id, options.lease_s)
    try:
        yield lease
    finally:
        lease.release()
