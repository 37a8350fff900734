"""The container stack is validated offline: there is no Docker engine on CI machines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.settings import CoordinatorSettings
from services.train.settings import TrainSettings
from shared.messages import STAGES
from shared.service import WorkerSettings
from shared.topology import build_topology

ROOT = Path(__file__).parents[2]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def emulator_topics() -> dict[str, dict[str, Any]]:
    config = json.loads((ROOT / "deploy/servicebus/Config.json").read_text())
    (namespace,) = config["UserConfig"]["Namespaces"]
    return {topic["Name"]: topic for topic in namespace["Topics"]}


def test_compose_file_matches_the_compose_spec() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_topic_and_subscription_the_code_uses_is_declared_for_the_emulator() -> None:
    declared = emulator_topics()
    for topic, subscriptions in build_topology().items():
        assert topic in declared, f"topic {topic} missing from deploy/servicebus/Config.json"
        assert declared[topic]["Properties"]["RequiresDuplicateDetection"] is True, topic
        names = {sub["Name"]: sub for sub in declared[topic]["Subscriptions"]}
        for subscription in subscriptions:
            assert subscription.name in names, f"{topic}/{subscription.name} not declared"
            properties = names[subscription.name]["Properties"]
            assert properties["MaxDeliveryCount"] == subscription.max_delivery_count


def test_every_service_builds_its_own_extra_from_the_dockerfile() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.MULTILINE))
    services = compose()["services"]

    assert services["coordinator"]["build"]["target"] == "coordinator"
    assert services["coordinator"]["build"]["args"]["EXTRA"] == "coordinator"
    for stage in STAGES:
        build = services[stage]["build"]
        assert build["target"] == "worker"
        assert build["args"] == {"EXTRA": stage, "STAGE": stage}
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["target"] in targets, name
            assert service["build"]["args"]["EXTRA"] in extras, name
            assert "healthcheck" in service or "HEALTHCHECK" in dockerfile, name
        else:
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_compose_only_sets_settings_the_services_read() -> None:
    known = {
        f"RETRAINER_{name.upper()}"
        for model in (CoordinatorSettings, WorkerSettings, TrainSettings)
        for name in model.model_fields
    }
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("RETRAINER_"):
                assert variable in known, f"{name}: {variable} is not a setting"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_a_runnable_module(stage: str) -> None:
    assert (ROOT / "services" / stage / "__main__.py").is_file()


def test_the_azure_ml_code_snapshot_holds_the_entry_point_and_not_the_venv() -> None:
    """AzureMLTrainingCompute uploads the repository root; .amlignore keeps it small."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    ignore = get_ignore_file(ROOT)
    needed = ["services/train/entrypoint.py", "shared/compute/port.py", "recipes/base.py"]
    for path in needed:
        assert (ROOT / path).is_file()
        assert not ignore.is_file_excluded(ROOT / path), path
    for path in [".venv/lib/x.py", "node_modules/a.js", ".retrainer/bus.sqlite", "tests/a.py"]:
        assert ignore.is_file_excluded(ROOT / path), path
