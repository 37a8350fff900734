"""Every topic and subscription the services use, declared in one place.

Azure Service Bus drops messages sent to a topic that has no subscription, so subscriptions
must exist before the first publish; adapters create (or, for Azure, verify) these at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ConfigurationError
from shared.messages import STAGES, Stage

EVENTS_TOPIC = "stage-events"
# Microsoft.Storage.BlobCreated events (Event Grid -> Service Bus, or the local blob store).
BLOB_EVENTS_TOPIC = "blob-events"
# CancelStage commands from the coordinator (subscription "train": only training hands work
# to outside compute that must be stopped).
CONTROL_TOPIC = "run-control"
# Azure ML's Microsoft.MachineLearningServices.RunStatusChanged events (Event Grid -> Service Bus).
COMPUTE_EVENTS_TOPIC = "compute-events"
COORDINATOR_SUBSCRIPTION = "coordinator"
WORKER_SUBSCRIPTION = "worker"
TRAIN_SUBSCRIPTION = "train"


def command_topic(stage: Stage) -> str:
    return f"stage-{stage}"


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
    topology[CONTROL_TOPIC] = sub(TRAIN_SUBSCRIPTION)
    topology[COMPUTE_EVENTS_TOPIC] = sub(TRAIN_SUBSCRIPTION)
    return topology


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
