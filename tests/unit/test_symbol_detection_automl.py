"""The symbol detector's AutoML task: the team's defaults, auto mode, a YAML search space."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recipes.symbol_detection.automl import EXAMPLE_SEARCH_SPACE, automl_task, parse_search_space


def test_the_defaults_are_the_teams_settings_in_auto_mode() -> None:
    task = automl_task(SimpleNamespace())
    assert task.primary_metric == "mean_average_precision"
    assert (task.max_trials, task.max_concurrent_trials, task.timeout_minutes) == (8, 4, 180)
    assert task.validation_data_size == 0.2
    assert task.target_column_name == "label"
    assert task.search_space is None


def test_a_yaml_search_space_is_swept() -> None:
    task = automl_task(SimpleNamespace(automl_search_space=EXAMPLE_SEARCH_SPACE))
    assert task.search_space is not None
    yolo, rcnn = task.search_space
    assert yolo["model_name"] == "yolov5"
    assert yolo["learning_rate"] == {"type": "uniform", "min_value": 0.0001, "max_value": 0.01}
    assert rcnn["optimizer"] == ["sgd", "adam", "adamw"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_name: [yolov9]", "unknown model_name"),
        ("[1, 2]", "a mapping"),
        ("{a: [", "not YAML"),
        ("[]", "at least one"),
        ("x" * 20_001, "longer than"),
    ],
)
def test_a_bad_search_space_is_refused_naming_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_search_space(text)
