"""Run the test broker on its own, with the services' topology, until interrupted:

    python -m tests.servicebus_broker [--lock-duration 60] [--max-delivery-count 10]

and point the services at it with the connection string it prints (RETRAINER_BUS=servicebus,
RETRAINER_SERVICEBUS_CONNECTION_STRING=...).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading

from shared.topology import build_topology
from tests.servicebus_broker import ServiceBusTestBroker


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servicebus_broker")
    parser.add_argument("--lock-duration", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--max-delivery-count", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    topology = build_topology(
        lock_duration_s=args.lock_duration, max_delivery_count=args.max_delivery_count
    )
    with ServiceBusTestBroker(topology) as broker:
        print(broker.connection_string, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
