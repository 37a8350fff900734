"""Bounds on what comes from outside: texts we store or return, JSON values, message bodies.

Every input is bounded so that one request, event or message cannot grow a process's memory,
the run store or the logs without limit: a long text is cut (``truncate``), a JSON value too
deep, too long, too wide or holding a number no database column can keep is refused
(``check_json``), before anything is recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Error texts the run store keeps and the API returns (a worker's exception message may repeat
# an input of any size).
MAX_ERROR_CHARS = 2000
# A dead-letter description; Service Bus keeps 4,096 characters of it.
MAX_DEAD_LETTER_DESCRIPTION_CHARS = 1000
# A bus message body: Service Bus standard tier's limit. Commands and events are a few KB.
MAX_MESSAGE_BYTES = 256 * 1024
# The largest integer a JSON column keeps exactly on both databases (PostgreSQL's bigint).
MAX_JSON_INT = 2**63 - 1


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    # Sized for the longest count it may show, so the result never exceeds ``limit``.
    kept = limit - len(f"... [{len(text)} more characters]")
    if kept < 0:
        return text[:limit]
    return text[:kept] + f"... [{len(text) - kept} more characters]"


@dataclass(frozen=True)
class JsonLimits:
    """How large a JSON value may be. Exceeding any bound makes it invalid, not truncated."""

    max_depth: int = 16
    max_string_chars: int = 4096
    # Entries of one object or items of one array.
    max_items: int = 1000
    # Values in all, containers included.
    max_values: int = 10_000


class JsonTooLargeError(ValueError):
    """A JSON value beyond its ``JsonLimits``; the message names where."""


def check_json(value: object, limits: JsonLimits, *, where: str = "") -> None:
    """Raise JsonTooLargeError naming the first place ``value`` exceeds ``limits`` (or holds
    a number that is not finite, or an integer beyond 64 bits). Iterative: a hostile depth
    cannot exhaust the stack."""
    pending: list[tuple[object, str, int]] = [(value, where, 0)]
    seen = 0
    while pending:
        item, path, depth = pending.pop()
        seen += 1
        if seen > limits.max_values:
            raise JsonTooLargeError(f"{where or 'value'}: more than {limits.max_values} values")
        if isinstance(item, dict | list):
            if depth >= limits.max_depth:
                raise JsonTooLargeError(
                    f"{path or 'value'}: nested deeper than {limits.max_depth} levels"
                )
            if len(item) > limits.max_items:
                raise JsonTooLargeError(f"{path or 'value'}: more than {limits.max_items} items")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise JsonTooLargeError(f"{path or 'value'}: a key that is not a string")
                    _check_string(key, f"{path or 'value'} key", limits)
                    pending.append((child, _join(path, key), depth + 1))
            else:
                pending.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, path or "value", limits)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_JSON_INT:
                raise JsonTooLargeError(f"{path or 'value'}: integer beyond 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonTooLargeError(f"{path or 'value'}: {item} is not a finite number")
        else:
            raise JsonTooLargeError(f"{path or 'value'}: {type(item).__name__} is not JSON")


def _check_string(text: str, path: str, limits: JsonLimits) -> None:
    if len(text) > limits.max_string_chars:
        raise JsonTooLargeError(f"{path}: longer than {limits.max_string_chars} characters")


def _join(path: str, key: str) -> str:
    shown = key if len(key) <= 64 else key[:61] + "..."
    return f"{path}.{shown}" if path else shown
