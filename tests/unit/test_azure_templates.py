"""The Azure templates (deploy/azure, azd layout) are validated offline.

Every template is parsed with pycep-parser; the Service Bus entities and their role assignments
are generated from shared/topology.py and must not be stale; the Container Apps run each
service as its own identity with only settings the services read, secrets only as Key Vault
references, and each worker scaled by KEDA on its own subscriptions; the alert queries name only
telemetry the code emits; and checkov's findings are exactly the ones deploy/README.md lists with
a reason.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pycep import BicepParser

from coordinator.settings import CoordinatorSettings
from coordinator.telemetry import input_name
from services.train.settings import TrainSettings
from shared.messages import STAGES
from shared.service import WorkerSettings
from shared.telemetry import ATTR_INPUT, METRIC_SINCE_LAST_SUCCESS
from shared.topology import build_topology, receiver, senders
from tests.unit.test_workbook import check_query, comparisons, syntax_problems

ROOT = Path(__file__).parents[2]
AZURE = ROOT / "deploy" / "azure"
TEMPLATES = sorted([*AZURE.rglob("*.bicep"), ROOT / "deploy/appinsights/workbook.bicep"])
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
SERVICES = ("coordinator", *STAGES)

# Azure's built-in role definition ids (the same in every tenant), by the role's display name.
BUILT_IN_ROLES = {
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "AzureML Data Scientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
}
# The KEDA azure-servicebus scaler's metadata keys (keda.sh/docs/scalers/azure-service-bus).
KEDA_SERVICEBUS_METADATA = frozenset(
    {"queueName", "topicName", "subscriptionName", "namespace", "messageCount",
     "activationMessageCount", "cloud", "endpointSuffix", "useRegex", "operation"}
)  # fmt: skip
_SECRET_NAME = re.compile(r"CONNECTION_STRING|SECRET|TOKEN|PASSWORD|_KEY\b", re.IGNORECASE)


@cache
def parse(path: Path) -> dict[str, Any]:
    parsed = BicepParser().parse(file_path=path)
    return cast(dict[str, Any], parsed)


def module(name: str) -> dict[str, Any]:
    return parse(AZURE / "modules" / f"{name}.bicep")


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's properties, inside any loop or condition."""
    config: dict[str, Any] = resource["config"]
    while "loop_type" in config or ("condition" in config and "config" in config):
        config = config["config"]
    return config


def loop_source(resource: dict[str, Any]) -> object:
    return resource["config"]["loop_type"]["detail"]["array_name"]


def accessor(expression: object) -> tuple[str, ...]:
    """``a.b.c`` (pycep's nested property accessors) as ('a', 'b', 'c')."""
    if isinstance(expression, str):
        return (expression,)
    assert isinstance(expression, dict) and "operator" in expression, expression
    operator = expression["operator"]
    assert operator["type"] == "property_accessor", expression
    operands = operator["operands"]
    return (*accessor(operands["operand_1"]), operands["operand_2"])


def walk(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def generated() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((AZURE / "generated/servicebus.json").read_text())
    return document


def roles_json() -> dict[str, str]:
    document: dict[str, str] = json.loads((AZURE / "roles.json").read_text())
    return {name: guid for name, guid in document.items() if not name.startswith("$")}


# -- parsing and the generated files -----------------------------------------------------------


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_template_parses(path: Path) -> None:
    parsed = parse(path)
    assert parsed.get("resources") or parsed.get("modules"), path
    for name, resource in parsed.get("resources", {}).items():
        assert re.fullmatch(r"[A-Za-z]+\.[A-Za-z]+(/[A-Za-z]+)+", resource["type"]), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", resource["api_version"]), name


def test_modules_named_by_main_exist_and_receive_only_their_parameters() -> None:
    main = parse(AZURE / "main.bicep")
    for name, declaration in main["modules"].items():
        path = AZURE / declaration["detail"]["path"]
        assert path.is_file(), name
        declared = set(parse(path)["parameters"])
        given = set(body(declaration)["params"])
        assert given <= declared, f"{name}: unknown parameters {given - declared}"
        required = {p for p, spec in parse(path)["parameters"].items() if "default" not in spec}
        assert required <= given, f"{name}: missing parameters {required - given}"


def test_the_generated_entities_are_up_to_date_with_shared_topology() -> None:
    generator = runpy.run_path(str(AZURE / "generate.py"))
    stale = generator["stale_files"]()
    assert stale == [], f"run `python deploy/azure/generate.py`: {stale} are stale"


def test_the_generated_entities_are_what_the_code_uses() -> None:
    document = generated()
    topology = build_topology()
    assert [topic["name"] for topic in document["topics"]] == list(topology)
    for topic in document["topics"]:
        # Deterministic message ids: a re-published message must be dropped.
        assert topic["requiresDuplicateDetection"] is True
        assert topic["duplicateDetectionHistoryTimeWindow"] == "PT10M"
    subscriptions = {(s["topic"], s["name"]): s for s in document["subscriptions"]}
    assert set(subscriptions) == {(t, spec.name) for t, specs in topology.items() for spec in specs}
    for topic, specs in topology.items():
        for spec in specs:
            sub = subscriptions[(topic, spec.name)]
            assert sub["maxDeliveryCount"] == spec.max_delivery_count
            assert sub["lockDurationSeconds"] == spec.lock_duration_s
            assert sub["deadLetteringOnMessageExpiration"] is True
            assert sub["receiver"] == receiver(topic, spec.name)
    declared = {(s["topic"], s["sender"]) for s in document["senders"]}
    assert declared == {(t, who) for t, names in senders().items() for who in names}
    # Each stage's commands come from the coordinator and go to that stage's worker only.
    for stage in STAGES:
        assert subscriptions[(f"stage-{stage}", "worker")]["receiver"] == stage
        assert {who for topic, who in declared if topic == f"stage-{stage}"} == {"coordinator"}


# -- Service Bus -------------------------------------------------------------------------------


def test_the_namespace_has_the_generated_topics_and_subscriptions_and_no_keys() -> None:
    servicebus = module("servicebus")
    load = servicebus["variables"]["topology"]["value"]["function"]
    assert load["type"] == "load_json_content"
    assert load["parameters"]["file_path"] == "../generated/servicebus.json"
    resources = servicebus["resources"]
    namespace = body(resources["namespace"])
    assert namespace["properties"]["disableLocalAuth"] is True
    assert namespace["sku"]["name"] in ("Standard", "Premium")  # topics need Standard
    topics, subscriptions = resources["topics"], resources["subscriptions"]
    assert accessor(loop_source(topics)) == ("topology", "topics")
    assert accessor(loop_source(subscriptions)) == ("topology", "subscriptions")
    # Every property comes from the generated entry of the same name.
    for resource in (topics, subscriptions):
        for key, value in body(resource)["properties"].items():
            if isinstance(value, dict):
                assert accessor(value)[1:] == (key,), key
    keys = generated()["subscriptions"][0].keys()
    assert {"lockDuration", "maxDeliveryCount", "deadLetteringOnMessageExpiration"} <= set(
        body(subscriptions)["properties"]
    ) & set(keys)


def test_service_bus_roles_are_per_entity_and_per_service() -> None:
    resources = module("servicebus")["resources"]
    senders_role = body(resources["senderRoles"])
    assert accessor(loop_source(resources["senderRoles"])) == ("topology", "senders")
    assert accessor(loop_source(resources["senderTopics"])) == ("topology", "senders")
    assert senders_role["scope"]["operator"]["type"] == "index_accessor"
    receivers_role = body(resources["receiverRoles"])
    assert accessor(loop_source(resources["receiverRoles"])) == ("topology", "subscriptions")
    assert receivers_role["scope"]["operator"]["type"] == "index_accessor"
    scaler_role = body(resources["scalerRoles"])
    assert accessor(loop_source(resources["scalerRoles"])) == ("topology", "scaledSubscriptions")
    for role, name in (
        (senders_role, "serviceBusDataSender"),
        (receivers_role, "serviceBusDataReceiver"),
        (scaler_role, "serviceBusDataOwner"),
    ):
        definition = json.dumps(role["properties"]["roleDefinitionId"])
        assert '"roles"' in definition and f'"{name}"' in definition, definition
    # KEDA needs Manage on the worker subscriptions only, never on the coordinator's.
    assert all(sub["receiver"] != "coordinator" for sub in generated()["scaledSubscriptions"])


def test_every_role_is_a_built_in_role_by_its_real_id() -> None:
    assert set(roles_json().values()) - set(BUILT_IN_ROLES.values()) == set()
    names = set(roles_json())
    for path in TEMPLATES:
        text = path.read_text()
        for guid in re.findall(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text
        ):
            pytest.fail(f"{path.name}: a role id written out ({guid}); use roles.json")
        for used in re.findall(r"\broles\.(?!json\b)(\w+)", text):
            assert used in names, f"{path.name}: roles.{used} is not in roles.json"
        for resource in parse(path).get("resources", {}).values():
            if resource["type"] != "Microsoft.Authorization/roleAssignments":
                continue
            properties = body(resource)
            # Scoped to one resource, never to the resource group or subscription.
            assert "scope" in properties, f"{path.name}: a role assignment without a scope"
            # A managed identity; only the deployer's one assignment takes its given type.
            principal_type = properties["properties"]["principalType"]
            assert principal_type in ("ServicePrincipal", "deployerPrincipalType"), path.name


# -- storage, Event Grid, Key Vault, PostgreSQL ------------------------------------------------


def test_storage_takes_no_shared_keys_and_event_grid_filters_on_the_trigger_rules() -> None:
    resources = module("storage")["resources"]
    account = body(resources["account"])["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False
    subscription = body(resources["blobCreated"])["properties"]
    assert subscription["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    (prefix_filter,) = subscription["filter"]["advancedFilters"]
    assert prefix_filter == {
        "operatorType": "StringBeginsWith",
        "key": "subject",
        "values": "subjectPrefixes",
    }
    assert subscription["eventDeliverySchema"] == "EventGridSchema"
    destination = subscription["deliveryWithResourceIdentity"]["destination"]
    assert destination["endpointType"] == "ServiceBusTopic"
    main = parse(AZURE / "main.bicep")
    assert "/blobServices/default/containers/${rule.container}/blobs/" in json.dumps(
        main["variables"]["subjectPrefixes"]
    )
    runs = body(module("azureml")["resources"]["runStatusChanged"])["properties"]
    assert runs["filter"]["includedEventTypes"] == [
        "Microsoft.MachineLearningServices.RunStatusChanged"
    ]
    (status_filter,) = runs["filter"]["advancedFilters"]
    # The key shared/compute/azureml_events.py reads.
    assert status_filter["key"] == "data.runStatus"


def test_whoever_changes_a_champion_may_lease_the_models_lock_blobs() -> None:
    """shared/promotion.py leases blobs under LEASES_PREFIX: its container exists, and the tag
    worker and the coordinator (manual promotions) hold write access to it and to the
    registry."""
    from shared.promotion import LEASES_PREFIX

    storage = module("storage")
    container = storage["variables"]["locksContainer"]["value"]
    assert LEASES_PREFIX.split("/")[0] == container
    assert set(storage["variables"]["promoters"]["value"]) == {"tag", "coordinator"}
    roles = storage["resources"]["promoterRoles"]
    assert accessor(loop_source(roles)) == ("promoters",)
    assert body(roles)["scope"] == "locks"
    assert '"storageBlobDataContributor"' in json.dumps(body(roles)["properties"])
    users = module("azureml")["variables"]["workspaceUsers"]["value"]
    assert {"tag", "coordinator"} <= set(users)


def test_postgres_takes_entra_tokens_only() -> None:
    resources = module("postgres")["resources"]
    auth = body(resources["server"])["properties"]["authConfig"]
    assert auth["activeDirectoryAuth"] == "Enabled"
    assert auth["passwordAuth"] == "Disabled"
    assert body(resources["coordinatorAdmin"])["properties"]["principalType"] == "ServicePrincipal"


def test_no_template_reads_keys_or_passes_them_around() -> None:
    for path in TEMPLATES:
        text = path.read_text()
        assert "listKeys(" not in text, path.name
        assert "listConnectionStrings(" not in text, path.name
        assert "administratorLoginPassword" not in text, path.name


# -- Container Apps ----------------------------------------------------------------------------


def env_entries() -> Iterator[dict[str, Any]]:
    for entry in walk(module("containerapps")):
        if set(entry) in ({"name", "value"}, {"name", "secretRef"}) and isinstance(
            entry["name"], str
        ):
            yield entry


def test_apps_set_only_settings_the_services_read_and_secrets_only_from_key_vault() -> None:
    known = {
        f"RETRAINER_{name.upper()}"
        for model in (CoordinatorSettings, WorkerSettings, TrainSettings)
        for name in model.model_fields
    }
    known |= {"APPLICATIONINSIGHTS_CONNECTION_STRING", "AZURE_CLIENT_ID"}
    entries = list(env_entries())
    assert len(entries) > 20
    for entry in entries:
        assert entry["name"] in known, f"{entry['name']} is not a setting"
        if _SECRET_NAME.search(entry["name"]):
            assert "secretRef" in entry, f"{entry['name']} must be a Key Vault reference"
    app = module("app")
    reference = app["variables"]["secretRefs"]["value"]["config"]
    assert set(reference) == {"name", "keyVaultUrl", "identity"}, "a secret by value"


def test_the_coordinator_is_told_how_to_authenticate_callers() -> None:
    names = {entry["name"] for entry in env_entries()}
    assert {"RETRAINER_API_TOKEN", "RETRAINER_AUTH_TENANT_ID", "RETRAINER_AUTH_AUDIENCE"} <= names
    assert {"RETRAINER_DATABASE_URL", "RETRAINER_DATABASE_ENTRA_AUTH"} <= names
    (url,) = [e["value"] for e in env_entries() if e["name"] == "RETRAINER_DATABASE_URL"]
    assert ":" not in url.split("@")[0].removeprefix("postgresql+psycopg://"), "no password"


def test_each_worker_scales_from_zero_on_its_own_subscriptions() -> None:
    workers = module("containerapps")["modules"]["workerApps"]
    assert loop_source(workers) == "workers"
    params = body(workers)["params"]
    assert params["minReplicas"] == 0
    rules = params["scaleRules"]
    source = json.dumps(rules["loop_type"]["detail"]["array_name"])
    assert all(f'"{name}"' in source for name in ("scaledSubscriptionsByService", "worker"))
    rule = rules["config"]["custom"]
    assert rule["type"] == "azure-servicebus"
    assert accessor(rule["identity"]) == ("identityIds", "scaler")
    assert set(rule["metadata"]) <= KEDA_SERVICEBUS_METADATA
    assert accessor(rule["metadata"]["topicName"]) == ("sub", "topic")
    assert accessor(rule["metadata"]["subscriptionName"]) == ("sub", "name")
    by_service = generated()["scaledSubscriptionsByService"]
    assert set(by_service) == set(STAGES)
    for stage in STAGES:
        assert {"topic": f"stage-{stage}", "name": "worker"} in [
            {"topic": s["topic"], "name": s["name"]} for s in by_service[stage]
        ]
    # train also wakes for cancellations and for Azure ML's job events.
    assert {s["topic"] for s in by_service["train"]} == {
        "stage-train",
        "run-control",
        "compute-events",
    }


def test_probes_use_the_services_health_endpoints() -> None:
    coordinator = body(module("containerapps")["modules"]["coordinator"])["params"]
    assert (coordinator["livenessPath"], coordinator["readinessPath"]) == ("/healthz", "/readyz")
    from coordinator.api import create_app

    paths = {getattr(route, "path", "") for route in create_app(CoordinatorSettings()).routes}
    assert {"/healthz", "/readyz"} <= paths
    worker = body(module("containerapps")["modules"]["workerApps"])["params"]
    assert worker["livenessPath"] == "/healthz"
    assert "RETRAINER_HEALTH_PORT" in {entry["name"] for entry in env_entries()}


# -- alerts ------------------------------------------------------------------------------------


def alert_queries() -> dict[str, str]:
    queries = {}
    for name, resource in module("monitoring")["resources"].items():
        if resource["type"] == "Microsoft.Insights/scheduledQueryRules":
            (criterion,) = body(resource)["properties"]["criteria"]["allOf"]
            # Bicep escapes and interpolation; the threshold is any number here.
            kql = criterion["query"].replace("\\n", "\n").replace("${staleAfterDays}", "7")
            queries[name] = kql
    return queries


def test_the_alerts_are_all_there() -> None:
    resources = module("monitoring")["resources"]
    assert set(alert_queries()) == {"runFailed", "stageOverDeadline", "noRecentSuccess"}
    dead_letters = body(resources["deadLettered"])["properties"]["criteria"]["allOf"][0]
    assert dead_letters["metricName"] == "DeadletteredMessages"
    assert dead_letters["metricNamespace"] == "Microsoft.ServiceBus/namespaces"


@pytest.mark.parametrize("name", ["runFailed", "stageOverDeadline", "noRecentSuccess"])
def test_alert_queries_name_only_telemetry_the_code_emits(name: str) -> None:
    kql = alert_queries()[name]
    assert syntax_problems(kql, set()) == []
    check = check_query(kql)
    assert check.problems == []
    assert check.names, "an alert query must select by name"


def test_the_deadline_and_staleness_alerts_read_what_the_coordinator_emits() -> None:
    from uuid import uuid4

    from coordinator.domain import DeadlineExpired

    missed = input_name(DeadlineExpired(uuid4(), "train", 1))
    kql = alert_queries()["stageOverDeadline"]
    assert f'tostring(customDimensions["{ATTR_INPUT}"]) == "{missed}"' in kql
    assert comparisons(alert_queries()["noRecentSuccess"], "name")[0].values == (
        METRIC_SINCE_LAST_SUCCESS,
    )


# -- azd ---------------------------------------------------------------------------------------


def test_azure_yaml_builds_each_service_from_its_dockerfile_target_and_extra() -> None:
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert azure["infra"] == {"provider": "bicep", "path": "deploy/azure", "module": "main"}
    assert (ROOT / azure["infra"]["path"] / "main.bicep").is_file()
    assert (ROOT / azure["infra"]["path"] / "main.parameters.json").is_file()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    targets = dockerfile_targets()
    assert set(azure["services"]) == set(SERVICES)
    for name, service in azure["services"].items():
        assert service["host"] == "containerapp"
        docker = service["docker"]
        assert docker["path"] == "deploy/Dockerfile"
        assert docker["target"] in targets, name
        args = dict(arg.split("=", 1) for arg in docker["buildArgs"])
        assert args["EXTRA"] in extras, name
        if name == "coordinator":
            assert docker["target"] == "coordinator"
        else:
            assert (docker["target"], args["STAGE"], args["EXTRA"]) == ("worker", name, name)
    for hooks in azure["hooks"].values():
        script = ROOT / hooks["posix"]["run"]
        assert script.is_file() and os.access(script, os.X_OK), script


def test_azd_parameters_cover_the_required_parameters() -> None:
    parameters = json.loads((AZURE / "main.parameters.json").read_text())["parameters"]
    declared = parse(AZURE / "main.bicep")["parameters"]
    assert set(parameters) <= set(declared)
    required = {name for name, spec in declared.items() if "default" not in spec}
    assert required <= set(parameters)


def dockerfile_targets() -> set[str]:
    text = (ROOT / "deploy/Dockerfile").read_text()
    return set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE))


# -- checkov -----------------------------------------------------------------------------------


def documented_findings() -> set[tuple[str, str]]:
    """(check id, resource) of every row of deploy/README.md's checkov table."""
    text = (ROOT / "deploy/README.md").read_text()
    section = text.split("### checkov findings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(CKV\w+)` \| `([^`]+)` \| (.+?) \|$", section, flags=re.MULTILINE)
    assert rows, "deploy/README.md has no checkov findings table"
    for check, resource, reason in rows:
        assert len(reason.strip()) > 20, f"{check} {resource}: give the reason"
    return {(check, resource) for check, resource, _ in rows}


def checkov_findings() -> tuple[set[tuple[str, str]], list[str]]:
    if not CHECKOV.exists():
        if os.environ.get("MAKELEVEL"):
            pytest.fail(f"{CHECKOV} is missing: `make install` installs it")
        pytest.skip(
            f"checkov is not installed at {CHECKOV} (its pins conflict with the project's lock):"
            " `make install` puts it there from deploy/azure/checkov-requirements.txt"
        )
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(AZURE), "--framework", "bicep", "--output", "json",
         "--skip-download", "--quiet", "--compact"],
        capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": ""},
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    found: set[tuple[str, str]] = set()
    parse_errors: list[str] = []
    for report in reports:
        results = report.get("results", {})
        parse_errors += results.get("parsing_errors", [])
        for failed in results.get("failed_checks", []):
            found.add(
                (failed["check_id"], f"{Path(failed['file_path']).name}:{failed['resource']}")
            )
    return found, parse_errors


@pytest.mark.slow
def test_checkov_finds_nothing_that_deploy_readme_does_not_explain() -> None:
    found, parse_errors = checkov_findings()
    assert parse_errors == [], "checkov could not parse these templates"
    documented = documented_findings()
    assert found - documented == set(), "new checkov findings: fix them or explain them"
    assert documented - found == set(), "deploy/README.md explains findings checkov no longer has"
