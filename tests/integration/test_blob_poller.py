"""The blob-change poller over a real blob store and bus: what it sends, and what it does not
send again (restarts, overwrites, late timestamps, two pollers)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.blob_poller import POLLER_SOURCE, BlobChangePoller, Start
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.events import BlobCreated, parse_event
from shared.topology import BLOB_EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, build_topology

WATCHES = [("datasets", "state-identifier/"), ("labels", "")]


@dataclass
class Rig:
    blobs: LocalBlobStore
    bus: SqliteMessageBus
    root: Path

    def poller(self, start: Start = "now", lookback_s: float = 300.0) -> BlobChangePoller:
        return BlobChangePoller(
            self.blobs, self.bus, watches=WATCHES, start=start, lookback_s=lookback_s
        )

    def upload(self, name: str, data: bytes = b"timestamp,a\n1,2\n") -> None:
        self.blobs.upload_blob(name, data)

    def backdate(self, name: str, seconds: float) -> None:
        path = self.root / "blobs" / name
        at = time.time() - seconds
        os.utime(path, (at, at))

    def sent(self) -> list[BlobCreated]:
        """The events on blob-events since the last call (received and completed)."""
        events: list[BlobCreated] = []
        while True:
            batch = self.bus.receive_messages(
                BLOB_EVENTS_TOPIC,
                COORDINATOR_SUBSCRIPTION,
                max_message_count=50,
                max_wait_time=0.05,
            )
            if not batch:
                return events
            for message in batch:
                event = parse_event(json.loads(message.body))
                assert isinstance(event, BlobCreated)
                assert message.message_id == event.event_id
                assert event.source == POLLER_SOURCE
                events.append(event)
                self.bus.complete_message(message)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # No on_blob_created hook: the poller is the only source of events here.
    blobs = LocalBlobStore(tmp_path / "blobs")
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())
    yield Rig(blobs, bus, tmp_path)
    bus.close()


def names(events: list[BlobCreated]) -> list[str]:
    return sorted(event.blob_name for event in events)


def test_blobs_there_before_the_first_poll_are_not_sent_but_later_ones_are(rig: Rig) -> None:
    rig.upload("datasets/state-identifier/old/a.csv")
    poller = rig.poller()
    assert poller.poll().sent == 0
    assert rig.sent() == []

    rig.upload("datasets/state-identifier/new/a.csv")
    rig.upload("datasets/state-identifier/new/b.csv")
    rig.upload("datasets/elsewhere/c.csv")  # not watched
    rig.upload("labels/x/_READY")
    report = poller.poll()
    assert report.sent == 3
    assert names(rig.sent()) == [
        "datasets/state-identifier/new/a.csv",
        "datasets/state-identifier/new/b.csv",
        "labels/x/_READY",
    ]
    # Nothing new: nothing sent, however often it polls.
    assert poller.poll().sent == 0
    assert rig.sent() == []


def test_start_beginning_sends_what_is_already_there(rig: Rig) -> None:
    rig.upload("datasets/state-identifier/old/a.csv")
    assert rig.poller(start="beginning").poll().sent == 1
    assert names(rig.sent()) == ["datasets/state-identifier/old/a.csv"]


def test_a_restarted_poller_resumes_from_the_stored_mark(rig: Rig) -> None:
    rig.poller().poll()
    rig.upload("datasets/state-identifier/d1/a.csv")
    assert rig.poller().poll().sent == 1
    rig.sent()
    # A new instance (a restarted coordinator) reads the mark from the blob store.
    restarted = rig.poller()
    assert restarted.poll().sent == 0
    rig.upload("datasets/state-identifier/d1/b.csv")
    assert restarted.poll().sent == 1
    assert names(rig.sent()) == ["datasets/state-identifier/d1/b.csv"]
    assert rig.blobs.get_blob_properties("artifacts/blob-poller/datasets.json").size > 0


def test_an_overwritten_blob_is_sent_again_with_its_new_etag(rig: Rig) -> None:
    poller = rig.poller()
    poller.poll()
    rig.upload("datasets/state-identifier/d/a.csv", b"1")
    poller.poll()
    (first,) = rig.sent()
    time.sleep(0.01)
    rig.upload("datasets/state-identifier/d/a.csv", b"22")
    poller.poll()
    (second,) = rig.sent()
    assert second.blob_name == first.blob_name
    assert (second.etag, second.event_id) != (first.etag, first.event_id)


def test_a_blob_with_a_late_timestamp_within_the_lookback_is_still_sent(rig: Rig) -> None:
    poller = rig.poller(lookback_s=300)
    poller.poll()
    rig.upload("datasets/state-identifier/d/a.csv")
    poller.poll()
    rig.sent()
    # Committed after the poll, stamped before the mark (clock skew, a slow upload).
    rig.upload("datasets/state-identifier/d/late.csv")
    rig.backdate("datasets/state-identifier/d/late.csv", 60)
    rig.upload("datasets/state-identifier/d/too-late.csv")
    rig.backdate("datasets/state-identifier/d/too-late.csv", 3600)
    assert poller.poll().sent == 1
    assert names(rig.sent()) == ["datasets/state-identifier/d/late.csv"]


def test_two_pollers_send_each_upload_under_the_same_event_id(rig: Rig) -> None:
    first, second = rig.poller(), rig.poller()
    first.poll()
    second.poll()
    rig.upload("datasets/state-identifier/d/a.csv")
    first.poll()
    second.poll()
    events = rig.sent()
    # The bus's duplicate detection drops the second copy: one event reaches the coordinator.
    assert len(events) == 1
    assert names(events) == ["datasets/state-identifier/d/a.csv"]
