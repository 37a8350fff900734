"""Blob-change poller: BlobCreated events for storage that has no Event Grid.

Azurite has no Event Grid, and neither do storage accounts nobody subscribed to; this adapter
stands in for it. Each ``poll`` lists the blobs under every watched (container, prefix) — the
trigger rules' — and sends, for each blob written since its container's high-water mark, the
``Microsoft.Storage.BlobCreated`` event Event Grid would have sent: Event Grid schema, one event
per message to the ``blob-events`` topic, message id = event id = a hash of (blob, etag)
(``shared.events.blob_event_message``). The coordinator cannot tell the two sources apart.

The mark, per container, is the newest last-modified time seen plus the (name, etag) of the
blobs modified within ``lookback_s`` before it: a blob committed late with an older timestamp
(clock skew between storage partitions, a long block-list upload) is still caught, and one
already sent is not sent again. It is kept in the blob store itself
(``artifacts/blob-poller/<container>.json``), so it survives restarts; it is written with an
etag condition, so of two pollers (two coordinator replicas) one advances it and the other
skips that round. Events are sent before the mark moves: a crash in between sends them again,
and the bus's duplicate detection and the coordinator's (blob, etag) record drop the copies.

A container polled for the first time has no mark: with ``start="now"`` (the default, like an
Event Grid subscription created now) the blobs already there are recorded and not sent; with
``start="beginning"`` they are sent.

Each poll lists every blob under the watched prefixes: fine for the folders uploads land in,
costly for a container of millions of blobs (use Event Grid there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from shared.blobs.port import BlobProperties, BlobStore
from shared.bus.port import MessageBus
from shared.errors import BlobConditionFailedError, BlobExistsError, BlobNotFoundError
from shared.events import blob_event_message
from shared.topology import BLOB_EVENTS_TOPIC

log = logging.getLogger(__name__)

# The source events claim: like Event Grid's topic (a storage account's resource id), a path.
POLLER_SOURCE = "/retrainer/blob-poller"
STATE_CONTAINER = "artifacts"
STATE_PREFIX = "blob-poller"
# Messages per send: a burst of uploads goes out in a few batches.
SEND_BATCH = 100

Start = Literal["now", "beginning"]


@dataclass
class _Mark:
    high_water: datetime | None = None
    # name -> etag of the blobs modified within the lookback before high_water: already sent.
    recent: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "high_water": self.high_water.isoformat() if self.high_water else None,
                "recent": self.recent,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Mark:
        raw = json.loads(data)
        high_water = raw.get("high_water")
        return cls(
            datetime.fromisoformat(high_water) if high_water else None, dict(raw.get("recent", {}))
        )


@dataclass(frozen=True)
class PollReport:
    containers: int
    listed: int
    sent: int


class BlobChangePoller:
    """``poll()`` once per interval (the coordinator's ``blob-poller`` loop does)."""

    def __init__(
        self,
        blobs: BlobStore,
        bus: MessageBus,
        *,
        watches: Iterable[tuple[str, str]],
        lookback_s: float = 300.0,
        start: Start = "now",
        source: str = POLLER_SOURCE,
    ) -> None:
        self._blobs = blobs
        self._bus = bus
        self._prefixes: dict[str, list[str]] = {}
        for container, prefix in watches:
            self._prefixes.setdefault(container, []).append(prefix)
        self._lookback = timedelta(seconds=lookback_s)
        self._start = start
        self._source = source

    @property
    def containers(self) -> Sequence[str]:
        return tuple(self._prefixes)

    def poll(self) -> PollReport:
        listed = sent = 0
        for container, prefixes in self._prefixes.items():
            found = self._list(container, prefixes)
            listed += len(found)
            sent += self._poll_container(container, found)
        return PollReport(len(self._prefixes), listed, sent)

    def _list(self, container: str, prefixes: Sequence[str]) -> list[BlobProperties]:
        by_name: dict[str, BlobProperties] = {}
        for prefix in prefixes:
            for props in self._blobs.list_blobs(f"{container}/{prefix}" if prefix else container):
                by_name[props.name] = props
        return list(by_name.values())

    def _poll_container(self, container: str, found: list[BlobProperties]) -> int:
        state_name = f"{STATE_CONTAINER}/{STATE_PREFIX}/{container}.json"
        try:
            stored = self._blobs.download_blob(state_name)
        except BlobNotFoundError:
            mark, etag = None, None
        else:
            mark, etag = _Mark.from_json(stored.data), stored.properties.etag
        if mark is None and self._start == "now":
            fresh: list[BlobProperties] = []
            log.info("blob poller: %d blobs already in %s, not sent", len(found), container)
        else:
            fresh = self._fresh(mark or _Mark(), found)
        for start in range(0, len(fresh), SEND_BATCH):
            batch = fresh[start : start + SEND_BATCH]
            self._bus.send_messages(
                BLOB_EVENTS_TOPIC, [blob_event_message(p, source=self._source) for p in batch]
            )
        if fresh:
            log.info("blob poller: %d new blobs in %s", len(fresh), container)
        advanced = self._advance(mark or _Mark(), found)
        if mark is not None and advanced == mark:
            return len(fresh)
        try:
            if etag is None:
                self._blobs.upload_blob(state_name, advanced.to_json(), overwrite=False)
            else:
                self._blobs.upload_blob(state_name, advanced.to_json(), if_match=etag)
        except (BlobConditionFailedError, BlobExistsError):
            # Another poller moved the mark meanwhile (having sent the same events).
            log.info("blob poller: the mark of %s moved meanwhile; next round", container)
        return len(fresh)

    def _fresh(self, mark: _Mark, found: list[BlobProperties]) -> list[BlobProperties]:
        floor = mark.high_water - self._lookback if mark.high_water else None
        fresh = [
            props
            for props in found
            if (floor is None or props.last_modified >= floor)
            and mark.recent.get(props.name) != props.etag
        ]
        fresh.sort(key=lambda props: (props.last_modified, props.name))
        return fresh

    def _advance(self, mark: _Mark, found: list[BlobProperties]) -> _Mark:
        times = [props.last_modified for props in found]
        if mark.high_water is not None:
            times.append(mark.high_water)
        if not times:
            return mark
        high_water = max(times)
        floor = high_water - self._lookback
        return _Mark(
            high_water,
            {props.name: props.etag for props in found if props.last_modified >= floor},
        )
