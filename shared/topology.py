"""Every topic and subscription the services use, who sends and who receives on each, and the
entity properties the code relies on, declared in one place.

Azure Service Bus drops messages sent to a topic that has no subscription, so subscriptions
must exist before the first publish; the embedded bus creates these at start-up, and the Azure
entities and their least-privilege role assignments are generated from this module
(``deploy/azure/generate.py`` writes ``deploy/azure/generated/servicebus.json`` and the
emulator's ``deploy/servicebus/Config.json``; a test fails when they are stale).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ConfigurationError
from shared.messages import STAGES, Stage

EVENTS_TOPIC = "stage-events"
# Microsoft.Storage.BlobCreated events (Event Grid -> Service Bus, or the local blob store).
BLOB_EVENTS_TOPIC = "blob-events"
# CancelStage commands from the coordinator, one subscription per stage named after it
# (``control_subscription``): every stage worker stops a cancelled attempt it is running.
CONTROL_TOPIC = "run-control"
# Azure ML's Microsoft.MachineLearningServices.RunStatusChanged events (Event Grid -> Service Bus).
COMPUTE_EVENTS_TOPIC = "compute-events"
COORDINATOR_SUBSCRIPTION = "coordinator"
WORKER_SUBSCRIPTION = "worker"
TRAIN_SUBSCRIPTION = "train"

# Message ids are deterministic, so a re-published message must be dropped by the bus's
# duplicate detection: within this window on every topic (the embedded bus uses it too).
DUPLICATE_DETECTION_WINDOW_S = 600.0
# A message nobody received within this time is dead-lettered, not dropped.
MESSAGE_TIME_TO_LIVE_S = 14 * 24 * 3600.0

COORDINATOR = "coordinator"
# Azure Event Grid (system topics on the storage account and the Azure ML workspace) publishes
# BlobCreated and RunStatusChanged events to their topics; locally the blob store does.
EVENT_GRID = "eventgrid"


def command_topic(stage: Stage) -> str:
    return f"stage-{stage}"


def control_subscription(stage: Stage) -> str:
    """The subscription of ``stage``'s workers on ``CONTROL_TOPIC``."""
    return stage


@dataclass(frozen=True)
class SubscriptionSpec:
    name: str
    max_delivery_count: int = 10
    lock_duration_s: float = 60.0


Topology = dict[str, tuple[SubscriptionSpec, ...]]


def build_topology(*, lock_duration_s: float = 60.0, max_delivery_count: int = 10) -> Topology:
    def sub(name: str) -> tuple[SubscriptionSpec, ...]:
        return (SubscriptionSpec(name, max_delivery_count, lock_duration_s),)

    topology: Topology = {command_topic(stage): sub(WORKER_SUBSCRIPTION) for stage in STAGES}
    topology[EVENTS_TOPIC] = sub(COORDINATOR_SUBSCRIPTION)
    topology[BLOB_EVENTS_TOPIC] = sub(COORDINATOR_SUBSCRIPTION)
    topology[CONTROL_TOPIC] = tuple(
        SubscriptionSpec(control_subscription(stage), max_delivery_count, lock_duration_s)
        for stage in STAGES
    )
    topology[COMPUTE_EVENTS_TOPIC] = sub(TRAIN_SUBSCRIPTION)
    return topology


def senders() -> dict[str, tuple[str, ...]]:
    """Topic -> the services that send to it (``EVENT_GRID`` for Event Grid's deliveries)."""
    topics: dict[str, tuple[str, ...]] = {command_topic(stage): (COORDINATOR,) for stage in STAGES}
    topics[EVENTS_TOPIC] = tuple(STAGES)
    topics[BLOB_EVENTS_TOPIC] = (EVENT_GRID,)
    topics[CONTROL_TOPIC] = (COORDINATOR,)
    topics[COMPUTE_EVENTS_TOPIC] = (EVENT_GRID,)
    return topics


def receiver(topic: str, subscription: str) -> str:
    """The service that receives from ``topic``/``subscription``: a stage's worker on its
    command topic; otherwise the service the subscription is named after."""
    if subscription == WORKER_SUBSCRIPTION:
        return topic.removeprefix("stage-")
    return subscription


def require_topic(topology: Topology, topic: str) -> None:
    """Adapters refuse undeclared entities up front, the same way whatever the backend."""
    if topic not in topology:
        raise ConfigurationError(
            f"topic {topic!r} is not declared in the bus topology "
            f"(declared: {', '.join(sorted(topology))})"
        )


def require_subscription(topology: Topology, topic: str, subscription: str) -> None:
    require_topic(topology, topic)
    names = [spec.name for spec in topology[topic]]
    if subscription not in names:
        raise ConfigurationError(
            f"subscription {subscription!r} is not declared on topic {topic!r} "
            f"(declared: {', '.join(sorted(names))})"
        )
