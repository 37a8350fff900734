"""A small AMQP 1.0 broker with Azure Service Bus semantics, for testing the real SDK.

The official Service Bus emulator needs Docker; this runs in a thread of the test process
instead. It implements what the ``ServiceBusMessageBus`` adapter and its contract suite use:
topics with subscriptions declared from a ``Topology``, peek-lock receives, settlement,
lock renewal, dead-lettering, duplicate detection and scheduled messages. See ``server.py``
for the wire side, ``model.py`` for the semantics and ``codec.py`` for the message encoding.

Not implemented: sessions, deferral, peeking, the schedule/cancel management operations,
message TTL, filters/rules, auto-forwarding, transactions, size quotas, authorisation (every
token is accepted) and TLS.
"""

from tests.servicebus_broker.server import ServiceBusTestBroker

__all__ = ["ServiceBusTestBroker"]
