"""Trigger rules: validation, loading from settings, and routing a blob to a run's data."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import ConfigurationError
from shared.events import BlobCreated
from shared.settings import CommonSettings
from shared.triggers import (
    DEFAULT_TRIGGER_RULES,
    RESERVED_CONTAINERS,
    NoMatch,
    TriggerMatch,
    TriggerRule,
    load_trigger_rules,
    route,
)

STATE = TriggerRule(container="datasets", prefix="state-identifier/", recipe="state_identifier")
FIXED = TriggerRule(
    container="datasets",
    prefix="fixed/",
    recipe="state_identifier",
    params={"n_clusters": 4},
    data="datasets/fixed",
)
MARKED = TriggerRule(container="labels", prefix="symbols/", recipe="symbols", marker="_READY")
RULES = (STATE, FIXED, MARKED)


def blob(name: str) -> BlobCreated:
    return BlobCreated(
        event_id="e",
        container=name.partition("/")[0],
        blob_name=name,
        etag="x",
        size=1,
        event_time=datetime(2025, 3, 1, tzinfo=UTC),
        source="s",
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # the first folder below the prefix, however deep the blob sits
        ("datasets/state-identifier/2025-03-01/part-1.csv", "datasets/state-identifier/2025-03-01"),
        ("datasets/state-identifier/2025-03-01/a/b/c.csv", "datasets/state-identifier/2025-03-01"),
        # a blob directly in the prefix's folder: that folder
        ("datasets/state-identifier/part-1.csv", "datasets/state-identifier"),
        # a rule's explicit data wins
        ("datasets/fixed/2025/x.csv", "datasets/fixed"),
    ],
)
def test_a_debounced_blob_counts_towards_its_drop_folder(name: str, data: str) -> None:
    routed = route(blob(name), RULES)
    assert isinstance(routed, TriggerMatch)
    assert routed.data == data
    assert routed.immediate is False


def test_a_prefix_without_a_slash_takes_the_folder_that_extends_it() -> None:
    rule = TriggerRule(container="raw", prefix="state-2025", recipe="r")
    routed = route(blob("raw/state-2025-03/x/part.csv"), [rule])
    assert isinstance(routed, TriggerMatch) and routed.data == "raw/state-2025-03"
    routed = route(blob("raw/state-2025.csv"), [rule])
    assert isinstance(routed, TriggerMatch) and routed.data == "raw"


def test_only_the_marker_starts_a_marker_rule_at_once_on_its_own_folder() -> None:
    waiting = route(blob("labels/symbols/batch-7/img-1.json"), RULES)
    assert isinstance(waiting, NoMatch) and "_READY" in waiting.reason

    routed = route(blob("labels/symbols/batch-7/_READY"), RULES)
    assert isinstance(routed, TriggerMatch)
    assert routed.immediate is True
    assert routed.data == "labels/symbols/batch-7"
    assert routed.rule == MARKED


def test_blobs_no_rule_covers_are_not_matched() -> None:
    for name in ("other/state-identifier/x.csv", "datasets/unknown/x.csv"):
        routed = route(blob(name), RULES)
        assert isinstance(routed, NoMatch) and "no trigger rule" in routed.reason


def test_the_first_matching_rule_wins() -> None:
    broad = TriggerRule(container="datasets", recipe="broad")
    routed = route(blob("datasets/state-identifier/d/x.csv"), [STATE, broad])
    assert isinstance(routed, TriggerMatch) and routed.rule.recipe == "state_identifier"
    routed = route(blob("datasets/state-identifier/d/x.csv"), [broad, STATE])
    assert isinstance(routed, TriggerMatch) and routed.rule.recipe == "broad"
    assert routed.data == "datasets/state-identifier"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"container": "artifacts"}, "workers' outputs"),
        ({"container": "Data_Sets"}, "container must be"),
        ({"container": "datasets/x"}, "without a path"),
        ({"prefix": "/abs/"}, "no leading '/'"),
        ({"prefix": "a/../b/"}, "'..'"),
        ({"data": "Bad/x"}, "valid container"),
        ({"marker": "a/_READY"}, "without '/'"),
        ({"recipe": ""}, "at least 1 character"),
        ({"debounce_s": -1}, "greater than or equal to 0"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_unusable_rules_are_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        TriggerRule.model_validate({"container": "datasets", "recipe": "r", **fields})


def test_the_reserved_container_is_where_the_workers_write() -> None:
    from shared.worker import ARTIFACTS_CONTAINER

    assert {ARTIFACTS_CONTAINER} == RESERVED_CONTAINERS


def test_rules_come_from_the_environment_and_a_file_in_that_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps([MARKED.model_dump()]))
    monkeypatch.setenv("RETRAINER_TRIGGER_RULES", json.dumps([STATE.model_dump()]))
    monkeypatch.setenv("RETRAINER_TRIGGER_RULES_FILE", str(rules_file))

    settings = CommonSettings()

    assert load_trigger_rules(settings.trigger_rules, settings.trigger_rules_file) == (
        STATE,
        MARKED,
    )


def test_without_configuration_the_defaults_apply_and_an_empty_list_turns_them_off() -> None:
    assert load_trigger_rules(None, None) == DEFAULT_TRIGGER_RULES
    assert load_trigger_rules([], None) == ()


def test_an_unreadable_rules_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.json"):
        load_trigger_rules(None, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"container": "artifacts", "recipe": "r"}]')
    with pytest.raises(ConfigurationError, match="workers' outputs"):
        load_trigger_rules(None, bad)


def test_a_group_rule_expands_over_the_run_data() -> None:
    rule = TriggerRule.model_validate(
        {
            "container": "datasets",
            "prefix": "species/",
            "recipe": "r",
            "group": {"expand": "csv_rows", "csv": "candidate_species.csv", "concurrency": 8},
        }
    )
    assert rule.group is not None
    expansion = rule.group.expansion("datasets/species/2025-06")
    assert expansion.model_dump() == {
        "kind": "csv_rows",
        "blob": "datasets/species/2025-06/candidate_species.csv",
        "entity_column": "entity",
        "data_column": None,
        "data_template": "datasets/species/2025-06/{entity}",
        "param_columns": (),
    }
    assert rule.describe() == "datasets/species/* -> a r group (debounce)"


@pytest.mark.parametrize(
    "group",
    [{"expand": "csv_rows"}, {"csv": "x.csv"}, {"expand": "csv_rows", "csv": "a/b.csv"}],
)
def test_a_group_rule_needs_a_csv_file_name_exactly_for_csv_rows(group: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="csv"):
        TriggerRule.model_validate({"container": "datasets", "recipe": "r", "group": group})
