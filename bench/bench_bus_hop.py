"""Stage-hop latency and throughput of the embedded (SQLite) message bus.

A stage hop is one message from one service process to another: the coordinator sending a
command, a worker publishing its event. Here process A sends a ping to one topic; process B, a
separate OS process, receives and completes it and sends a pong to another topic, which A
receives. Reported: A -> B and B -> A hop latency (from before ``send_messages`` to after
``receive_messages`` returned in the other process) and the round trip, then the throughput of
a batch that B receives and completes one message at a time.

Both processes read CLOCK_MONOTONIC, which Linux and macOS keep system-wide, so timestamps
taken in different processes compare directly.

    .venv/bin/python bench/bench_bus_hop.py --hops 300 --json bench-bus-hop.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.bus.port import OutgoingMessage
from shared.bus.sqlite import SqliteMessageBus
from shared.topology import SubscriptionSpec, Topology

PING, ECHO = "bench-ping", "echo"
PONG, ORIGIN = "bench-pong", "origin"
TOPOLOGY: Topology = {
    PING: (SubscriptionSpec(ECHO, lock_duration_s=60.0),),
    PONG: (SubscriptionSpec(ORIGIN, lock_duration_s=60.0),),
}
WARM_UP_HOPS = 20


def clock_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def echo(path: Path, poll_interval_s: float) -> None:
    """Process B: answer every ping, and the last message of a batch, with a pong."""
    bus = SqliteMessageBus(path, topology=TOPOLOGY, poll_interval_s=poll_interval_s)
    while True:
        for message in bus.receive_messages(PING, ECHO, max_message_count=100, max_wait_time=5):
            received_ns = clock_ns()
            bus.complete_message(message)
            if message.subject == "stop":
                bus.close()
                return
            if message.subject == "ping" or message.application_properties.get("last"):
                pong = OutgoingMessage(
                    body=b"",
                    message_id=f"pong-{message.message_id}",
                    subject=message.subject,
                    application_properties={"received_ns": received_ns, "sent_ns": clock_ns()},
                )
                bus.send_messages(PONG, [pong])


def receive_pong(bus: SqliteMessageBus) -> tuple[int, dict[str, Any]]:
    received = bus.receive_messages(PONG, ORIGIN, max_wait_time=30)
    received_ns = clock_ns()
    if not received:
        sys.exit("no pong within 30 s: the echo process is stuck or dead")
    bus.complete_message(received[0])
    return received_ns, dict(received[0].application_properties)


def measure_hops(bus: SqliteMessageBus, hops: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"a_to_b": [], "b_to_a": [], "round_trip": []}
    for i in range(WARM_UP_HOPS + hops):
        sent_ns = clock_ns()
        bus.send_messages(PING, [OutgoingMessage(b"", message_id=f"ping-{i}", subject="ping")])
        received_ns, pong = receive_pong(bus)
        if i < WARM_UP_HOPS:
            continue
        samples["a_to_b"].append((int(pong["received_ns"]) - sent_ns) / 1e6)
        samples["b_to_a"].append((received_ns - int(pong["sent_ns"])) / 1e6)
        samples["round_trip"].append((received_ns - sent_ns) / 1e6)
    return samples


def measure_batch(bus: SqliteMessageBus, count: int, batch_size: int) -> dict[str, float]:
    messages = [
        OutgoingMessage(
            b"x" * 256,
            message_id=f"batch-{i}",
            subject="batch",
            application_properties={"last": i == count - 1},
        )
        for i in range(count)
    ]
    started_ns = clock_ns()
    for i in range(0, count, batch_size):
        bus.send_messages(PING, messages[i : i + batch_size])
    sent_s = (clock_ns() - started_ns) / 1e9
    _, pong = receive_pong(bus)
    delivered_s = (int(pong["received_ns"]) - started_ns) / 1e9
    return {
        "messages": count,
        "send_batch_size": batch_size,
        "send_s": sent_s,
        "send_msgs_per_s": count / sent_s,
        "delivered_s": delivered_s,
        "delivered_msgs_per_s": count / delivered_s,
    }


def summarise(samples: list[float]) -> dict[str, float]:
    percentiles = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "n": len(samples),
        "p50_ms": percentiles[49],
        "p95_ms": percentiles[94],
        "p99_ms": percentiles[98],
        "mean_ms": statistics.fmean(samples),
        "max_ms": max(samples),
    }


def print_report(result: dict[str, Any]) -> None:
    config = result["config"]
    print(
        f"embedded bus (SQLite {config['sqlite_version']}), poll interval "
        f"{config['poll_interval_s'] * 1000:g} ms, {config['hops']} hops"
    )
    print(f"{'':12}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}{'max':>10}")
    labels = {"a_to_b": "hop A -> B", "b_to_a": "hop B -> A", "round_trip": "round trip"}
    for key, label in labels.items():
        row = result["latency"][key]
        cells = "".join(f"{row[f'{p}_ms']:>7.2f} ms" for p in ("p50", "p95", "p99", "mean", "max"))
        print(f"{label:12}{cells}")
    batch = result["batch"]
    print(
        f"batch of {batch['messages']}: sent in {batch['send_s']:.2f} s "
        f"({batch['send_msgs_per_s']:,.0f} msg/s, {batch['send_batch_size']} per send); "
        f"received and completed in B after {batch['delivered_s']:.2f} s "
        f"({batch['delivered_msgs_per_s']:,.0f} msg/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2000, help="messages in the batch run")
    parser.add_argument("--batch-size", type=int, default=100, help="messages per send call")
    parser.add_argument("--poll-interval", type=float, default=0.02, help="seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        path = Path(tmp) / "bus.sqlite"
        bus = SqliteMessageBus(path, topology=TOPOLOGY, poll_interval_s=args.poll_interval)
        process_b = multiprocessing.get_context("spawn").Process(
            target=echo, args=(path, args.poll_interval)
        )
        process_b.start()
        try:
            samples = measure_hops(bus, args.hops)
            batch = measure_batch(bus, args.batch, args.batch_size)
            bus.send_messages(PING, [OutgoingMessage(b"", message_id="stop", subject="stop")])
            process_b.join(timeout=30)
        finally:
            if process_b.is_alive():
                process_b.terminate()
            bus.close()

    result = {
        "config": {
            "hops": args.hops,
            "warm_up_hops": WARM_UP_HOPS,
            "poll_interval_s": args.poll_interval,
            "sqlite_version": sqlite3.sqlite_version,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "latency": {key: summarise(values) for key, values in samples.items()},
        "batch": batch,
    }
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
