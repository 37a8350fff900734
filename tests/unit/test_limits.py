"""Bounds on texts and JSON values (shared/limits.py), and decoding that never raises anything
but MalformedMessageError / MalformedEventError whatever the bytes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import MalformedMessageError
from shared.events import MalformedEventError, decode_events
from shared.limits import JsonLimits, JsonTooLargeError, check_json, truncate
from shared.messages import MESSAGE_CLASSES, decode
from tests.hostile import DEEP_ARRAY, HUGE_INT


@given(st.text(max_size=5000), st.integers(min_value=0, max_value=3000))
def test_truncate_never_exceeds_the_limit_and_keeps_short_texts(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit:
        assert cut == text
    else:
        assert cut.startswith(text[: max(limit - 30, 0)])


def test_truncate_says_how_much_was_cut() -> None:
    assert truncate("x" * 5000, 100) == "x" * 74 + "... [4926 more characters]"


LIMITS = JsonLimits(max_depth=3, max_string_chars=5, max_items=3, max_values=20)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": {"b": {"c": {}}}}, "a.b.c: nested deeper than 3 levels"),
        ({"a": "toolong"}, "a: longer than 5 characters"),
        ({"toolongkey": 1}, "value key: longer than 5 characters"),
        ([1, 2, 3, 4], "value: more than 3 items"),
        ({"n": 2**64}, "n: integer beyond 64 bits"),
        ({"n": float("nan")}, "n: nan is not a finite number"),
        ([[[1, 2, 3]] * 3] * 3, "more than 20 values"),
        ({"x": object()}, "x: object is not JSON"),
    ],
)
def test_check_json_names_where_a_value_is_too_large(value: object, problem: str) -> None:
    with pytest.raises(JsonTooLargeError, match=problem.replace("[", r"\[")):
        check_json(value, LIMITS)


def test_check_json_accepts_what_fits() -> None:
    check_json({"a": [1, 2.5, None], "b": {"c": "five!"}, "d": True}, LIMITS)


def test_check_json_is_not_recursive() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(JsonTooLargeError, match="nested deeper"):
        check_json(deep, JsonLimits())


@settings(max_examples=300)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=10), children, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
        st.sampled_from([DEEP_ARRAY, b'{"attempt": ' + HUGE_INT + b"}"]),
    ),
    message_type=st.sampled_from([*MESSAGE_CLASSES, "nope"]),
    version=st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none()),
)
def test_decode_raises_only_malformed_message_error(
    body: bytes, message_type: str, version: object
) -> None:
    with contextlib.suppress(MalformedMessageError):
        decode(body, {"message_type": message_type, "schema_version": version})


@settings(max_examples=300)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["id", "eventType", "subject", "eventTime", "data", "api", "specversion"]
                    )
                    | st.text(max_size=5),
                    children,
                    max_size=6,
                )
            ),
            max_leaves=30,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_decode_events_raises_only_malformed_event_error(body: bytes) -> None:
    with contextlib.suppress(MalformedEventError):
        decode_events(body)
