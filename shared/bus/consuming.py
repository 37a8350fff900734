"""Settling received messages one by one, so that one bad message never holds up the others.

Every consumer (the coordinator's stage-events and blob-events loops, the stage workers, the
train service's follower) hands each message of a batch to ``handle_each``: a message whose
handler raises is abandoned on its own (the bus redelivers it and, after its max delivery count,
dead-letters it), and the rest of the batch is handled as if it were not there. A message that
cannot be decoded is not worth a redelivery: ``dead_letter`` moves it to the dead-letter queue at
once, with a reason and a description saying what is wrong with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from shared.bus.port import MessageBus, ReceivedMessage
from shared.limits import MAX_DEAD_LETTER_DESCRIPTION_CHARS, truncate

log = logging.getLogger(__name__)

# Dead-letter reasons.
MALFORMED_MESSAGE = "MalformedMessage"  # not a command or event of ours (shared/messages.py)
MALFORMED_EVENT = "MalformedEvent"  # not an Event Grid / CloudEvents event we can read


def handle_each(
    bus: MessageBus,
    messages: Sequence[ReceivedMessage],
    handle: Callable[[ReceivedMessage], None],
    *,
    consumer: str,
) -> int:
    """Call ``handle`` (which settles the message) for each message; returns how many.

    A handler that raises leaves its message abandoned, not the batch."""
    for message in messages:
        try:
            handle(message)
        except Exception:
            log.exception(
                "%s: handling message %s failed; abandoning it (the bus redelivers it)",
                consumer,
                message.message_id,
            )
            _abandon_quietly(bus, message, consumer)
    return len(messages)


def dead_letter(
    bus: MessageBus, message: ReceivedMessage, *, reason: str, description: str
) -> None:
    """Dead-letter ``message`` at once with ``reason`` and a bounded ``description``."""
    description = truncate(description, MAX_DEAD_LETTER_DESCRIPTION_CHARS)
    log.warning(
        "dead-lettering message %s from %s/%s: %s: %s",
        message.message_id,
        message.topic,
        message.subscription,
        reason,
        description,
    )
    bus.dead_letter_message(message, reason=reason, error_description=description)


def _abandon_quietly(bus: MessageBus, message: ReceivedMessage, consumer: str) -> None:
    try:
        bus.abandon_message(message)
    except Exception as exc:
        # Its lock expires instead: redelivered a little later all the same.
        log.warning("%s: abandoning %s failed: %s", consumer, message.message_id, exc)
