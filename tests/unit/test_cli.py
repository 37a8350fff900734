"""The CLI's rendering and argument handling (the end-to-end tests drive it against a stack)."""

import httpx
import pytest

from coordinator.cli import CliError, _checked, _parse_param, _stage_line, describe_run


def run_doc(**overrides: object) -> dict[str, object]:
    stages = [
        {
            "name": name,
            "status": "pending",
            "attempt": 0,
            "cached": False,
            "duration_s": None,
            "error": None,
        }
        for name in ("aggregation", "split", "train", "register", "tag")
    ]
    return {
        "id": "r1",
        "status": "running",
        "recipe": "x",
        "data": "d/p",
        "params": {},
        "stages": stages,
        "metrics": {},
        "model": None,
        "error": None,
        **overrides,
    }


def test_params_are_json_values_or_strings() -> None:
    assert _parse_param("n_clusters=4") == ("n_clusters", 4)
    assert _parse_param('features=["mean"]') == ("features", ["mean"])
    assert _parse_param("name=plain") == ("name", "plain")
    with pytest.raises(CliError, match="not key=value"):
        _parse_param("oops")


def test_stage_line_shows_position_attempt_cache_and_error() -> None:
    run = run_doc()
    train = {
        "name": "train",
        "status": "failed",
        "attempt": 2,
        "cached": False,
        "duration_s": None,
        "error": "boom",
    }
    assert _stage_line(run, train, 3.0) == "[##...]    3.0s  train        failed (attempt 2): boom"
    split = {
        "name": "split",
        "status": "succeeded",
        "attempt": 1,
        "cached": True,
        "duration_s": 0.5,
        "error": None,
    }
    assert (
        _stage_line(run, split, 1.0) == "[##...]    1.0s  split        succeeded (cached) in 0.50s"
    )


def test_describe_run_names_model_and_promotion() -> None:
    text = describe_run(
        run_doc(
            status="succeeded",
            metrics={"silhouette": 0.61234},
            model={"name": "m", "version": "3", "champion": False, "reason": "not better"},
        )
    )
    assert "silhouette=0.6123" in text
    assert "model: m v3, not promoted (not better)" in text


def test_http_errors_become_readable_messages() -> None:
    request = httpx.Request("POST", "http://c/runs")
    response = httpx.Response(
        422,
        request=request,
        json={
            "detail": [
                {"loc": ["body", "params", "n_clusterz"], "msg": "Extra inputs are not permitted"},
                {"loc": ["body", "recipe"], "msg": "unknown recipe 'nope'"},
            ]
        },
    )
    with pytest.raises(CliError) as raised:
        _checked(response)
    assert str(raised.value) == (
        "POST /runs: HTTP 422: params.n_clusterz: Extra inputs are not permitted; "
        "recipe: unknown recipe 'nope'"
    )
