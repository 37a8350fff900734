"""Writes the Service Bus entities and their role assignments from ``shared/topology.py``.

    python deploy/azure/generate.py           # rewrite the generated files
    python deploy/azure/generate.py --check   # exit 1, naming the stale files, if they differ

Outputs:

* ``deploy/azure/generated/servicebus.json``: the topics, subscriptions (lock duration, max
  delivery count, duplicate detection, time to live, dead-lettering) and who sends to each
  topic and receives from each subscription; ``modules/servicebus.bicep`` loads it, so the
  namespace and the least-privilege role assignments follow the code.
* ``deploy/servicebus/Config.json``: the same entities for the Service Bus emulator.

``tests/unit/test_azure_templates.py`` runs the check, so the templates cannot drift from the
code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.topology import (  # noqa: E402  (the repository root is on the path only now)
    COORDINATOR,
    DUPLICATE_DETECTION_WINDOW_S,
    MESSAGE_TIME_TO_LIVE_S,
    build_topology,
    receiver,
    senders,
)

SERVICEBUS_JSON = ROOT / "deploy/azure/generated/servicebus.json"
EMULATOR_JSON = ROOT / "deploy/servicebus/Config.json"
EMULATOR_NAMESPACE = "sbemulatorns"
GENERATED_NOTE = "Generated from shared/topology.py by deploy/azure/generate.py: do not edit."


def iso_duration(seconds: float) -> str:
    """600 -> PT10M, 1209600 -> P14D (whole seconds; what Service Bus accepts)."""
    total = round(seconds)
    if total <= 0:
        raise ValueError(f"a duration must be positive, not {seconds}")
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(
        f"{value}{unit}" for value, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if value
    )
    return ("P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")) or "PT0S"


def servicebus_entities() -> dict[str, Any]:
    topology = build_topology()
    topics = [
        {
            "name": topic,
            "requiresDuplicateDetection": True,
            "duplicateDetectionHistoryTimeWindow": iso_duration(DUPLICATE_DETECTION_WINDOW_S),
            "defaultMessageTimeToLive": iso_duration(MESSAGE_TIME_TO_LIVE_S),
        }
        for topic in topology
    ]
    subscriptions = [
        {
            "topic": topic,
            "name": spec.name,
            "lockDuration": iso_duration(spec.lock_duration_s),
            "lockDurationSeconds": spec.lock_duration_s,
            "maxDeliveryCount": spec.max_delivery_count,
            "deadLetteringOnMessageExpiration": True,
            "defaultMessageTimeToLive": iso_duration(MESSAGE_TIME_TO_LIVE_S),
            "receiver": receiver(topic, spec.name),
        }
        for topic, specs in topology.items()
        for spec in specs
    ]
    scaled = [sub for sub in subscriptions if sub["receiver"] != COORDINATOR]
    senders_by_topic = senders()
    missing = set(topology) ^ set(senders_by_topic)
    if missing:
        raise ValueError(f"topics without senders, or senders of unknown topics: {missing}")
    return {
        "$comment": GENERATED_NOTE,
        "topics": topics,
        "subscriptions": subscriptions,
        # What KEDA scales each worker on (the coordinator runs all the time).
        "scaledSubscriptions": scaled,
        "scaledSubscriptionsByService": {
            service: [sub for sub in scaled if sub["receiver"] == service]
            for service in dict.fromkeys(sub["receiver"] for sub in scaled)
        },
        "senders": [
            {"topic": topic, "sender": sender}
            for topic, names in senders_by_topic.items()
            for sender in names
        ],
    }


def emulator_config() -> dict[str, Any]:
    """The emulator's Config.json: the same topics and subscriptions."""
    entities = servicebus_entities()
    topics = []
    for topic in entities["topics"]:
        subscriptions = [
            {
                "Name": sub["name"],
                "Properties": {
                    "DeadLetteringOnMessageExpiration": sub["deadLetteringOnMessageExpiration"],
                    "DefaultMessageTimeToLive": sub["defaultMessageTimeToLive"],
                    "LockDuration": sub["lockDuration"],
                    "MaxDeliveryCount": sub["maxDeliveryCount"],
                    "ForwardDeadLetteredMessagesTo": "",
                    "ForwardTo": "",
                    "RequiresSession": False,
                },
                "Rules": [],
            }
            for sub in entities["subscriptions"]
            if sub["topic"] == topic["name"]
        ]
        topics.append(
            {
                "Name": topic["name"],
                "Properties": {
                    "DefaultMessageTimeToLive": topic["defaultMessageTimeToLive"],
                    "DuplicateDetectionHistoryTimeWindow": topic[
                        "duplicateDetectionHistoryTimeWindow"
                    ],
                    "RequiresDuplicateDetection": topic["requiresDuplicateDetection"],
                },
                "Subscriptions": subscriptions,
            }
        )
    return {
        "UserConfig": {
            "Namespaces": [{"Name": EMULATOR_NAMESPACE, "Queues": [], "Topics": topics}],
            "Logging": {"Type": "File"},
        }
    }


def rendered() -> dict[Path, str]:
    return {
        SERVICEBUS_JSON: json.dumps(servicebus_entities(), indent=2) + "\n",
        EMULATOR_JSON: json.dumps(emulator_config(), indent=2) + "\n",
    }


def stale_files() -> list[Path]:
    return [
        path for path, text in rendered().items() if not path.is_file() or path.read_text() != text
    ]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_files()
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is stale: run `python deploy/azure/generate.py`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    if argv:
        print("usage: python deploy/azure/generate.py [--check]", file=sys.stderr)
        return 2
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
