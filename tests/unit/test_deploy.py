"""The container stack is validated offline: there is no Docker engine on CI machines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
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


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage of deploy/Dockerfile."""

    name: str
    parent: str
    args: list[str] = field(default_factory=list)
    # ``--extra X`` of its ``uv sync`` lines (``${EXTRA}`` as written).
    extras: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)
    command: list[str] | None = None


def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    # Continuation lines joined: one instruction per line.
    text = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            parent, _, name = rest.partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), parent.strip())
            continue
        assert current is not None, line
        if instruction == "ARG":
            current.args.append(rest.split("=")[0])
        elif instruction == "RUN" and "uv sync" in rest:
            current.extras += re.findall(r"--extra (\S+)", rest)
        elif instruction == "COPY":
            current.copies.append(rest)
        elif instruction == "CMD":
            current.command = json.loads(rest)
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built on, nearest first."""
    found = []
    while name in stages:
        found.append(stages[name])
        name = stages[name].parent
    return found


def resolved_image(
    stages: dict[str, Stage], target: str, args: dict[str, str]
) -> tuple[list[str], set[str], list[str]]:
    """What an image built for ``target`` with build ``args`` runs, installs and copies."""
    layers = chain(stages, target)
    command = next(stage.command for stage in layers if stage.command is not None)
    extras = {extra for stage in layers for extra in stage.extras}
    extras = {args["EXTRA"] if extra == "${EXTRA}" else extra for extra in extras}
    rendered = [part.replace("${STAGE}", args.get("STAGE", "${STAGE}")) for part in command]
    copies = [copy for stage in layers for copy in stage.copies]
    return rendered, extras, copies


def runs_module(command: list[str]) -> str | None:
    """``python -m X`` (directly or through ``sh -c "exec ..."``) -> X."""
    match = re.search(r"python -m ([\w.]+)", " ".join(command))
    return match.group(1) if match else None


def test_the_dockerfile_header_names_its_targets() -> None:
    stages = dockerfile_stages()
    runnable = {name for name, stage in stages.items() if stage.command is not None}
    assert runnable == {"coordinator", "worker", "mlflow"}
    header = (ROOT / "deploy/Dockerfile").read_text().split("\nFROM ", 1)[0]
    named = set(re.findall(r"^#\s{2,}(\w+)\s{2,}", header, flags=re.MULTILINE))
    assert named == runnable, "the header's target list does not match the stages"


def test_every_image_runs_its_service_with_only_its_extra() -> None:
    """Compose's and azd's builds: each target's command runs the service's module, from an
    image that installed that service's extra (and no other)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    stages = dockerfile_stages()
    builds: dict[str, dict[str, Any]] = {
        f"compose:{name}": service["build"]
        for name, service in compose()["services"].items()
        if "build" in service
    }
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    for name, service in azure["services"].items():
        docker = service["docker"]
        builds[f"azd:{name}"] = {
            "target": docker["target"],
            "args": dict(arg.split("=", 1) for arg in docker["buildArgs"]),
        }
    assert {key.split(":")[1] for key in builds} == {"coordinator", "mlflow", *STAGES}
    for key, build in builds.items():
        service = key.split(":")[1]
        args = build.get("args", {})
        command, installed, copies = resolved_image(stages, build["target"], args)
        if key.startswith("compose:") and "command" in compose()["services"][service]:
            command = compose()["services"][service]["command"]
        assert installed <= set(extras), key
        if service == "mlflow":
            assert command[:2] == ["mlflow", "server"], key
            assert installed == {"tracking", "postgres"}, key
            assert not any("pip" in part for part in command), "nothing installed at start"
            continue
        assert installed == {service}, f"{key} installs {installed}"
        module = runs_module(command)
        assert module == ("coordinator" if service == "coordinator" else f"services.{service}")
        assert (ROOT / module.replace(".", "/") / "__main__.py").is_file(), key
        if service == "train":
            # The Azure ML code snapshot of /app (no registered code asset) leaves .venv out.
            assert ".amlignore ./" in copies, key


def test_compose_images_are_pinned_and_the_stack_is_the_promised_one() -> None:
    services = compose()["services"]
    for name, service in services.items():
        if "image" in service:
            image = service["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} unpinned"
        if "build" not in service:
            check = service.get("healthcheck", {})
            assert check.get("test") or check.get("disable") is True, f"{name}: no healthcheck"
    assert services["sqlserver"]["image"].startswith("mcr.microsoft.com/mssql/server:2022-")
    assert services["servicebus"]["environment"]["SQL_SERVER"] == "sqlserver"
    assert not any("azure-sql-edge" in s.get("image", "") for s in services.values())
    coordinator = services["coordinator"]["environment"]
    assert coordinator["RETRAINER_API_TOKEN"].startswith("${RETRAINER_API_TOKEN:?")
    assert coordinator["RETRAINER_BLOB_POLLER"] == "true"
    env = services["aggregation"]["environment"]
    assert env["RETRAINER_TELEMETRY_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://aspire:")
    assert "aspire-dashboard" in services["aspire"]["image"]


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
