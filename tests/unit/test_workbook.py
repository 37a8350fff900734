"""The Application Insights workbook only queries telemetry the code emits.

`deploy/appinsights/workbook.json` is an Azure Monitor Workbook template (Notebook/1.0). Its KQL
names spans, events, metrics and custom dimensions by string; nothing at deploy time checks
them, and a misspelt name just draws an empty chart. So every name a query relies on — string
literals compared with `name`, every `customDimensions` key, every `cloud_RoleName` literal —
is extracted here and checked against what `shared.telemetry` exports, and the KQL is checked
superficially (balanced brackets and quotes, known tables and operators, defined parameters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.messages import STAGES
from shared.telemetry import (
    ATTR_ACTOR,
    ATTR_ATTEMPT,
    ATTR_CORRELATION_ID,
    ATTR_ENTITY,
    ATTR_ERROR_TYPE,
    ATTR_MODEL_NAME,
    ATTR_MODEL_VERSION,
    ATTR_OUTCOME,
    ATTR_PREVIOUS_VERSION,
    ATTR_PRIMARY_METRIC,
    ATTR_PRIMARY_METRIC_VALUE,
    ATTR_REASON,
    ATTR_RECIPE,
    ATTR_RUN_STATUS,
    ATTR_STAGE,
    ATTR_TRIGGER,
    ATTRIBUTE_NAMES,
    EVENT_MODEL_PROMOTED,
    EVENT_MODEL_REGISTERED,
    EVENT_NAMES,
    EVENT_RUN_CANCELLED,
    EVENT_RUN_FAILED,
    EVENT_RUN_STARTED,
    EVENT_RUN_SUCCEEDED,
    METRIC_NAMES,
    METRIC_QUEUE_WAIT,
    METRIC_STAGE_DURATION,
    OUTCOME_FAILED,
    OUTCOME_SUCCEEDED,
    OUTCOMES,
    SPAN_COORDINATOR,
    SPAN_NAMES,
    SPAN_STAGE,
)

ROOT = Path(__file__).parents[2]
WORKBOOK = ROOT / "deploy" / "appinsights" / "workbook.json"
SCHEMA = (
    "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"
)

# The names this workbook was written against; each must be among the names shared.telemetry
# exports (SPAN_NAMES, EVENT_NAMES, ...), which are what the queries are checked against.
SPANS = frozenset({SPAN_STAGE, SPAN_COORDINATOR})
EVENTS = frozenset(
    {
        EVENT_RUN_STARTED,
        EVENT_RUN_SUCCEEDED,
        EVENT_RUN_FAILED,
        EVENT_RUN_CANCELLED,
        EVENT_MODEL_REGISTERED,
        EVENT_MODEL_PROMOTED,
    }
)
METRICS = frozenset({METRIC_STAGE_DURATION, METRIC_QUEUE_WAIT})
ATTRIBUTES = frozenset(
    {
        ATTR_CORRELATION_ID,
        ATTR_STAGE,
        ATTR_RECIPE,
        ATTR_ATTEMPT,
        ATTR_OUTCOME,
        ATTR_ERROR_TYPE,
        ATTR_TRIGGER,
        ATTR_RUN_STATUS,
        ATTR_MODEL_NAME,
        ATTR_MODEL_VERSION,
        ATTR_PRIMARY_METRIC,
        ATTR_PRIMARY_METRIC_VALUE,
        ATTR_ENTITY,
        ATTR_ACTOR,
        ATTR_REASON,
        ATTR_PREVIOUS_VERSION,
    }
)
# cloud_RoleName: the coordinator and one role per stage worker.
ROLES = frozenset({"coordinator", *STAGES})

# What `name` means depends on the table: a span name in `requests`, an event name in
# `customEvents`, a metric name in `customMetrics`. A query over several tables (union, join)
# is checked against all of them.
NAMES_BY_TABLE: dict[str, frozenset[str]] = {
    "requests": SPAN_NAMES,
    "dependencies": SPAN_NAMES,
    "customEvents": EVENT_NAMES,
    "customMetrics": METRIC_NAMES,
}
ROW_NAMES = SPAN_NAMES | EVENT_NAMES | METRIC_NAMES
TABLES = frozenset(
    {"requests", "dependencies", "customEvents", "customMetrics", "traces", "exceptions", "union"}
)
VISUALIZATIONS = frozenset({"timechart", "barchart", "table", "piechart"})
# The tabular operators the queries may pipe into (a typo such as `| summarise` is caught).
OPERATORS = frozenset(
    {
        "where",
        "extend",
        "summarize",
        "project",
        "project-away",
        "project-rename",
        "project-reorder",
        "order",
        "sort",
        "top",
        "take",
        "limit",
        "render",
        "join",
        "lookup",
        "union",
        "mv-expand",
        "parse",
        "distinct",
        "count",
        "make-series",
        "evaluate",
        "as",
        "serialize",
        "sample",
    }
)


# -- a small KQL reader ----------------------------------------------------------------------


class KqlError(ValueError):
    """The query is not well-formed enough to be read."""


_STRING_START = re.compile(r"""(?:@|[hH]@?)?(["'])""")


def mask_strings(kql: str) -> tuple[str, list[str]]:
    """The query with each string literal replaced by `__S<i>__`, and the literals' values.

    Handles "..." and '...' with backslash escapes, verbatim @"..." (a doubled quote is a
    quote) and the obfuscated h"..." forms. An unterminated literal raises KqlError.
    """
    out: list[str] = []
    values: list[str] = []
    i = 0
    while i < len(kql):
        if kql.startswith("//", i):  # a comment runs to the end of the line
            end = kql.find("\n", i)
            i = len(kql) if end < 0 else end
            continue
        match = _STRING_START.match(kql, i)
        if match is None or (kql[i] in "hH@" and i > 0 and _is_ident_char(kql[i - 1])):
            out.append(kql[i])
            i += 1
            continue
        quote = match.group(1)
        verbatim = "@" in match.group(0)
        j = match.end()
        chars: list[str] = []
        while True:
            if j >= len(kql) or kql[j] == "\n":
                raise KqlError(f"unterminated string literal at offset {i}: {kql[i : i + 40]!r}")
            char = kql[j]
            if verbatim:
                if char == quote:
                    if kql.startswith(quote * 2, j):
                        chars.append(quote)
                        j += 2
                        continue
                    break
                chars.append(char)
                j += 1
            else:
                if char == "\\" and j + 1 < len(kql):
                    chars.append(kql[j + 1])
                    j += 2
                    continue
                if char == quote:
                    break
                chars.append(char)
                j += 1
        out.append(f"__S{len(values)}__")
        values.append("".join(chars))
        i = j + 1
    return "".join(out), values


def _is_ident_char(char: str) -> bool:
    return char.isalnum() or char == "_"


_LITERAL = r"__S\d+__"
_LITERAL_LIST = rf"\(\s*{_LITERAL}(?:\s*,\s*{_LITERAL})*\s*\)"
# Comparison operators whose right-hand side must be a literal (or a list of literals).
_OPERATOR = (
    r"==|!=|=~|!~|!?in~?|has_any|has_all|"
    r"!?(?:startswith|endswith|has|contains|hasprefix|hassuffix)(?:_cs)?"
)
_LITERAL_ID = re.compile(r"__S(\d+)__")


@dataclass(frozen=True)
class Comparison:
    column: str
    operator: str
    values: tuple[str, ...]


def comparisons(kql: str, column: str) -> list[Comparison]:
    """Every comparison of `column` with string literals, in either order.

    `column == "x"`, `column in ("x", "y")`, `column startswith "x"`, `"x" == column`, ...
    A comparison of the column with anything but literals raises KqlError: a name the test
    cannot read is a name it cannot check.
    """
    masked, values = mask_strings(kql)
    found: list[Comparison] = []
    col = re.escape(column)
    forward = re.compile(rf"(?<![\w.\]]){col}\s*(?P<op>{_OPERATOR})(?![A-Za-z0-9~=])")
    for match in forward.finditer(masked):
        rest = masked[match.end() :]
        rhs = re.match(rf"\s*({_LITERAL_LIST}|{_LITERAL})", rest)
        if rhs is None:
            raise KqlError(
                f"{column} {match['op']} compared with something that is not a string literal: "
                f"{masked[match.start() : match.end() + 30]!r}"
            )
        ids = _LITERAL_ID.findall(rhs.group(1))
        found.append(Comparison(column, match["op"], tuple(values[int(n)] for n in ids)))
    backward = re.compile(rf"__S(?P<id>\d+)__\s*(?P<op>==|!=|=~|!~)\s*{col}(?![\w.\[])")
    for match in backward.finditer(masked):
        found.append(Comparison(column, match["op"], (values[int(match["id"])],)))
    return found


def dimension_keys(kql: str) -> list[str]:
    """Every key read from customDimensions: `customDimensions["k"]`, `customDimensions.k`."""
    masked, values = mask_strings(kql)
    keys: list[str] = []
    for match in re.finditer(r"(?<![\w.])customDimensions\b\s*(\.\s*\[|\[|\.)?", masked):
        access = (match.group(1) or "").replace(" ", "")
        rest = masked[match.end() :]
        if not access:
            continue  # the whole bag: `project customDimensions`, `bag_keys(customDimensions)`
        if access in ("[", ".["):
            key = re.match(rf"\s*{_LITERAL_ID.pattern}\s*\]", rest)
            if key is None:
                raise KqlError(
                    "customDimensions indexed by something that is not a string literal: "
                    f"{masked[match.start() : match.end() + 30]!r}"
                )
            keys.append(values[int(key.group(1))])
        else:
            # `customDimensions.a.b` reads key "a", then "b" inside it: only "a" is a key here.
            ident = re.match(r"\s*([A-Za-z_]\w*)", rest)
            if ident is None:
                raise KqlError(f"unreadable customDimensions access: {rest[:30]!r}")
            keys.append(ident.group(1))
    return keys


def _statements(masked: str) -> list[str]:
    return [part.strip() for part in masked.split(";") if part.strip()]


def tables(kql: str) -> set[str]:
    """The tables a query reads: its source, the operands of union/join/lookup, tabular lets."""
    masked, _ = mask_strings(kql)
    statements = _statements(masked)
    bound: set[str] = set()
    found: set[str] = set()

    def source(expression: str) -> None:
        word = re.match(r"\(?\s*([A-Za-z_][\w-]*)", expression)
        if word is None:
            return  # a number or another scalar: `let threshold = 5`
        name = word.group(1)
        rest = expression[word.end() :].lstrip()
        if name == "union":
            found.add("union")
            operands = re.match(r"((?:\s*\w+\s*=\s*\w+)*)\s*([^|]*)", rest)
            assert operands is not None
            for operand in operands.group(2).split(","):
                source(operand.strip())
        elif rest.startswith("(") and name not in TABLES:
            pass  # a scalar function call: `let x = replace_string(...)`
        elif re.fullmatch(r"__S\d+__|\d[\w.]*", name) or name in bound:
            pass  # a literal, a number, or a name bound by an earlier let
        else:
            found.add(name)

    for statement in statements:
        let = re.match(r"let\s+([A-Za-z_]\w*)\s*=\s*", statement)
        if let is not None:
            source(statement[let.end() :])
            bound.add(let.group(1))
        else:
            source(statement)
    for joined in re.finditer(r"\|\s*(?:join|lookup)\b(?:\s+\w+\s*=\s*\w+)*\s*\(?\s*(\w+)", masked):
        if joined.group(1) not in bound:
            found.add(joined.group(1))
    for inner in re.finditer(r"\|\s*union\b(?:\s+\w+\s*=\s*\w+)*\s*([^|]*)", masked):
        for operand in inner.group(1).split(","):
            name = operand.strip().lstrip("(").strip()
            if name and name not in bound:
                found.add(re.split(r"[\s|)]", name)[0])
    return found


def syntax_problems(kql: str, parameters: set[str]) -> list[str]:
    """Superficial KQL checks: literals, brackets, statements, operators, parameters."""
    try:
        masked, _ = mask_strings(kql)
    except KqlError as exc:
        return [str(exc)]
    problems: list[str] = []
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in masked:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            problems.append(f"unbalanced {char!r}")
            break
    if stack:
        problems.append(f"unclosed {''.join(stack)!r}")
    statements = _statements(masked)
    if not statements:
        return [*problems, "empty query"]
    *lets, body = statements
    for statement in lets:
        if not re.match(r"let\s+[A-Za-z_]\w*\s*=\s*\S", statement):
            problems.append(f"a statement before the last one is not a let: {statement[:40]!r}")
    if body.startswith("let "):
        problems.append("the query ends with a let statement (missing body or stray ';')")
    first = re.match(r"\(?\s*([A-Za-z_]\w*)", body)
    bound = {m.group(1) for m in (re.match(r"let\s+(\w+)", s) for s in lets) if m}
    if first is None or (first.group(1) not in TABLES and first.group(1) not in bound):
        problems.append(f"the query does not start with a known table or let: {body[:40]!r}")
    if re.search(r"\|\s*($|\|)", body):
        problems.append("empty pipe stage")
    for operator in re.finditer(r"\|\s*([A-Za-z][\w-]*)", masked):
        if operator.group(1) not in OPERATORS:
            problems.append(f"unknown operator | {operator.group(1)}")
    for placeholder in re.finditer(r"\{(\w+)(?::\w+)?\}", kql):
        if placeholder.group(1) not in parameters:
            problems.append(f"undefined parameter {{{placeholder.group(1)}}}")
    return problems


@dataclass
class Check:
    """What a query relies on, and what of it shared.telemetry does not export."""

    tables: set[str] = field(default_factory=set)
    names: list[Comparison] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    roles: list[Comparison] = field(default_factory=list)
    outcomes: list[Comparison] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _known(comparison: Comparison, allowed: frozenset[str]) -> list[str]:
    """The values of a comparison that match none of the allowed names."""
    unknown = []
    op = comparison.operator
    if op not in ("!=", "!~"):
        op = op.lstrip("!").removesuffix("_cs")
    for value in comparison.values:
        if op in ("==", "!=", "in"):
            ok = value in allowed
        elif op in ("=~", "!~", "in~"):
            ok = value.lower() in {name.lower() for name in allowed}
        elif op in ("startswith", "hasprefix"):
            ok = any(name.startswith(value) for name in allowed)
        elif op in ("endswith", "hassuffix"):
            ok = any(name.endswith(value) for name in allowed)
        else:  # has, contains, has_any, has_all
            ok = any(value.lower() in name.lower() for name in allowed)
        if not ok:
            unknown.append(value)
    return unknown


def check_query(kql: str) -> Check:
    """Extracts the names a query relies on and reports those shared.telemetry lacks."""
    check = Check()
    try:
        check.tables = tables(kql)
        check.names = comparisons(kql, "name")
        check.keys = dimension_keys(kql)
        check.roles = comparisons(kql, "cloud_RoleName")
        # The queries call the outcome dimension `outcome`; its values are OUTCOME_*.
        check.outcomes = comparisons(kql, "outcome")
    except KqlError as exc:
        check.problems.append(str(exc))
        return check
    for table in sorted(check.tables - TABLES):
        check.problems.append(f"table {table!r} is not one the services write to")
    data_tables = check.tables - {"union"}
    if "union" in check.tables or len(data_tables) != 1:
        allowed = ROW_NAMES
    else:
        allowed = NAMES_BY_TABLE.get(next(iter(data_tables)), frozenset())
    for comparison in check.names:
        for value in _known(comparison, allowed):
            check.problems.append(
                f"name {comparison.operator} {value!r}: not a span, event or metric name "
                f"shared.telemetry exports for {sorted(data_tables)}"
            )
    for key in check.keys:
        if key not in ATTRIBUTE_NAMES:
            check.problems.append(
                f'customDimensions["{key}"]: not an attribute shared.telemetry exports'
            )
    for comparison in check.roles:
        for value in _known(comparison, ROLES):
            check.problems.append(f"cloud_RoleName {comparison.operator} {value!r}: not a service")
    for comparison in check.outcomes:
        for value in _known(comparison, OUTCOMES):
            check.problems.append(f"outcome {comparison.operator} {value!r}: not an OUTCOME_*")
    return check


# -- the workbook ------------------------------------------------------------------------------


def load() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    return document


def query_items() -> list[dict[str, Any]]:
    return [item for item in load()["items"] if item["type"] == 3]


def parameter_names() -> set[str]:
    return {
        parameter["name"]
        for item in load()["items"]
        if item["type"] == 9
        for parameter in item["content"]["parameters"]
    }


def test_the_workbook_is_a_notebook_template() -> None:
    workbook = load()
    assert workbook["version"] == "Notebook/1.0"
    assert workbook["$schema"] == SCHEMA
    assert isinstance(workbook["fallbackResourceIds"], list)
    assert workbook["fallbackResourceIds"]
    items = workbook["items"]
    assert isinstance(items, list)
    assert items
    names = [item["name"] for item in items]
    assert len(names) == len(set(names)), "item names must be unique"
    for item in items:
        assert item["type"] in (1, 3, 9), item["name"]
        content = item["content"]
        if item["type"] == 1:
            assert isinstance(content["json"], str)
            assert content["json"].strip()
        elif item["type"] == 9:
            assert content["version"] == "KqlParameterItem/1.0"
            for parameter in content["parameters"]:
                assert re.fullmatch(r"[A-Za-z]\w*", parameter["name"])
                assert parameter["type"] in (1, 2, 4)
        else:
            assert content["version"] == "KqlItem/1.0"
            assert content["queryType"] == 0
            assert content["resourceType"] == "microsoft.insights/components"
            assert content["visualization"] in VISUALIZATIONS, item["name"]
            assert content["title"].strip()
            assert content["query"].strip()
        if "customWidth" in item:
            assert item["customWidth"] in {"25", "33", "50", "66", "75", "100"}
        visibility = item.get("conditionalVisibility")
        if visibility:
            assert visibility["parameterName"] in parameter_names()


def test_the_time_range_parameter_scopes_every_query() -> None:
    time_ranges = {
        parameter["name"]
        for item in load()["items"]
        if item["type"] == 9
        for parameter in item["content"]["parameters"]
        if parameter["type"] == 4
    }
    assert time_ranges == {"TimeRange"}
    for item in query_items():
        assert item["content"]["timeContextFromParameter"] in time_ranges, item["name"]


def test_the_panels_are_all_there() -> None:
    titles = {item["name"]: item["content"]["title"] for item in query_items()}
    assert {
        "runs-by-status",
        "stage-duration-percentiles",
        "failed-attempts",
        "failed-runs",
        "trigger-sources",
        "primary-metric-trend",
        "queue-wait",
        "run-lookup",
    } <= set(titles)
    by_name = {item["name"]: item["content"] for item in query_items()}
    stage = by_name["stage-duration-percentiles"]["query"]
    assert "percentiles(duration, 50, 95)" in stage
    assert f'name == "{SPAN_STAGE}"' in stage
    lookup = by_name["run-lookup"]["query"]
    assert "operation_Id == cid" in lookup
    assert 'replace_string(trim(@"\\s+", "{CorrelationId}"), "-", "")' in lookup


@pytest.mark.parametrize("item", query_items(), ids=lambda item: item["name"])
def test_each_query_reads_only_what_the_services_emit(item: dict[str, Any]) -> None:
    query = item["content"]["query"]
    check = check_query(query)
    assert check.problems == []
    assert check.tables, "no table found"
    assert syntax_problems(query, parameter_names()) == []


@pytest.mark.parametrize("item", query_items(), ids=lambda item: item["name"])
def test_chart_settings_name_columns_of_the_query(item: dict[str, Any]) -> None:
    settings = item["content"].get("chartSettings", {})
    columns = [settings.get("xAxis"), *settings.get("yAxis", []), settings.get("group")]
    masked, _ = mask_strings(item["content"]["query"])
    for column in filter(None, columns):
        assert re.search(rf"\b{re.escape(column)}\b", masked), column


def test_every_span_event_and_metric_appears_on_some_panel() -> None:
    used: set[str] = set()
    for item in query_items():
        for comparison in check_query(item["content"]["query"]).names:
            used.update(comparison.values)
    assert (SPANS | EVENTS | METRICS) - used == set()


def test_the_names_the_workbook_uses() -> None:
    """The extractor actually sees the workbook's names (guards against it finding nothing)."""
    names: set[str] = set()
    keys: set[str] = set()
    roles: set[str] = set()
    for item in query_items():
        check = check_query(item["content"]["query"])
        names.update(value for c in check.names for value in c.values)
        keys.update(check.keys)
        roles.update(value for c in check.roles for value in c.values)
    assert names == SPANS | EVENTS | METRICS
    assert keys == ATTRIBUTES
    assert roles == ROLES


def test_the_constants_are_among_the_exported_names() -> None:
    assert SPANS <= SPAN_NAMES
    assert EVENTS <= EVENT_NAMES
    assert METRICS <= METRIC_NAMES
    assert ATTRIBUTES <= ATTRIBUTE_NAMES
    assert {OUTCOME_SUCCEEDED, OUTCOME_FAILED} <= OUTCOMES


# -- the extractor catches mistakes ---------------------------------------------------------

GOOD = f"""
customEvents
| where name in ("{EVENT_RUN_STARTED}", "{EVENT_RUN_FAILED}") and cloud_RoleName == "coordinator"
| extend stage = tostring(customDimensions["{ATTR_STAGE}"])
| summarize count() by stage, bin(timestamp, 1h)
"""


def test_a_good_query_passes() -> None:
    check = check_query(GOOD)
    assert check.problems == []
    assert check.tables == {"customEvents"}
    assert [c.values for c in check.names] == [(EVENT_RUN_STARTED, EVENT_RUN_FAILED)]
    assert check.keys == [ATTR_STAGE]
    assert [c.values for c in check.roles] == [("coordinator",)]
    assert syntax_problems(GOOD, set()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (f'"{EVENT_RUN_FAILED}"', '"RunFail"', "RunFail"),  # a typo in an event name
        (f'"{EVENT_RUN_FAILED}"', '"runfailed"', "runfailed"),  # == and in are case-sensitive
        (f'"{EVENT_RUN_FAILED}"', f'"{SPAN_STAGE}"', SPAN_STAGE),  # a span name in customEvents
        (f'"{ATTR_STAGE}"', '"retrainer.stage"', "retrainer.stage"),  # span name as a key
        (f'"{ATTR_STAGE}"', '"retrainer.stagename"', "retrainer.stagename"),
        (f'customDimensions["{ATTR_STAGE}"]', "customDimensions.stage_name", "stage_name"),
        (f'customDimensions["{ATTR_STAGE}"]', f"customDimensions.{ATTR_STAGE}", "retrainer"),
        (f'customDimensions["{ATTR_STAGE}"]', "customDimensions[key]", "not a string literal"),
        ('"coordinator"', '"trainer"', "trainer"),  # not a service
        (
            f'name in ("{EVENT_RUN_STARTED}", "{EVENT_RUN_FAILED}")',
            'name startswith "Run"',
            "",  # a prefix of real names: accepted
        ),
        (
            f'name in ("{EVENT_RUN_STARTED}", "{EVENT_RUN_FAILED}")',
            'name startswith "Runs"',
            "Runs",
        ),
        (
            f'name in ("{EVENT_RUN_STARTED}", "{EVENT_RUN_FAILED}")',
            f'"{EVENT_RUN_STARTED}x" == name',
            f"{EVENT_RUN_STARTED}x",
        ),
        (
            f'name in ("{EVENT_RUN_STARTED}", "{EVENT_RUN_FAILED}")',
            "name == event_name",
            "not a string literal",
        ),
        ("customEvents", "customEvent", "customEvent"),  # an unknown table
        ("customEvents", "pageViews", "pageViews"),
    ],
)
def test_a_mutated_query_is_caught(old: str, new: str, problem: str) -> None:
    assert old in GOOD
    problems = check_query(GOOD.replace(old, new, 1)).problems
    if problem:
        assert any(problem in p for p in problems), problems
    else:
        assert problems == []


def test_a_mutated_workbook_query_is_caught() -> None:
    """The same extractor on a real panel: one changed letter fails it."""
    query = next(i for i in query_items() if i["name"] == "primary-metric-trend")["content"][
        "query"
    ]
    assert check_query(query).problems == []
    for old, new in [
        (EVENT_MODEL_REGISTERED, EVENT_MODEL_REGISTERED.lower()),
        (ATTR_PRIMARY_METRIC_VALUE, ATTR_PRIMARY_METRIC_VALUE.replace("_value", "-value")),
        (ATTR_MODEL_NAME, ATTR_MODEL_NAME + "s"),
    ]:
        assert old in query
        assert check_query(query.replace(old, new)).problems, new
    query = next(i for i in query_items() if i["name"] == "stage-duration-percentiles")["content"][
        "query"
    ]
    assert check_query(query).problems == []
    for old, new in [
        (SPAN_STAGE, SPAN_STAGE + "s"),
        (f'"{OUTCOME_SUCCEEDED}"', '"success"'),
        (ATTR_OUTCOME, "retrainer.outcomes"),
        (f'name == "{SPAN_STAGE}"', f'name == "{EVENT_RUN_STARTED}"'),  # an event in requests
    ]:
        assert old in query
        assert check_query(query.replace(old, new)).problems, new


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ('requests | where name == "x', "unterminated"),
        ("requests | where (duration > 1", "unclosed"),
        ("requests | where duration > 1)", "unbalanced"),
        ("requests | summarise count()", "unknown operator | summarise"),
        ("requests | where duration > 1 |", "empty pipe"),
        ("pageViews | take 1", "does not start with a known table"),
        ("let x = 1; requests | where timestamp {Range}", "undefined parameter {Range}"),
        ("let x = 1;", "ends with a let"),
    ],
)
def test_syntax_problems_are_found(query: str, problem: str) -> None:
    problems = syntax_problems(query, {"TimeRange"})
    assert any(problem in p for p in problems), problems


def test_string_literals_are_read_like_kql() -> None:
    masked, values = mask_strings(
        """requests | where name == 'a"b' or name == "c\\"d" or name == @"e""f" // "g"\n"""
    )
    assert values == ['a"b', 'c"d', 'e"f']
    assert '"g"' not in masked


def test_the_bicep_module_deploys_this_workbook() -> None:
    bicep = (WORKBOOK.parent / "workbook.bicep").read_text(encoding="utf-8")
    assert "loadJsonContent('workbook.json')" in bicep
    assert "'Microsoft.Insights/workbooks@" in bicep
