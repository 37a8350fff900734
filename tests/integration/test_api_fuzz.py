"""Schemathesis against the coordinator's OpenAPI document, the webhook's event schemas
included: whatever it generates, valid or not, no request is answered with a 5xx.

Bounded: ``MAX_EXAMPLES`` cases per operation, in-process (ASGI), over the real SQLite bus, local
blob store and SQLite run store. Hypothesis keeps what it finds in its example database, so a
failure found once is tried first the next time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)

from coordinator.api import create_app
from coordinator.service import TriggerPolicy
from coordinator.settings import CoordinatorSettings
from shared.recipe_registry import list_recipes
from shared.triggers import TriggerRule
from tests.integration.test_coordinator_api import make_coordinator

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    root = tmp_path_factory.mktemp("fuzz")
    coordinator = make_coordinator(root)
    # Events under datasets/ are recorded (and may start runs), not just ignored.
    coordinator._triggers = TriggerPolicy(
        rules=(TriggerRule(container="datasets", prefix="", recipe="state_identifier"),)
    )
    coordinator.blobs.upload_blob("datasets/a/part-1.csv", b"timestamp,a\n1,2\n")
    list_recipes()  # their imports take seconds: not in the first request
    app = create_app(CoordinatorSettings(state_dir=root), coordinator=coordinator, run_loops=False)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    coordinator.close()


# Every operation of the document, built without starting anything: one test each.
OPERATIONS = [
    (path, method.upper())
    for path, item in create_app().openapi()["paths"].items()
    for method in item
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_request_is_answered_with_a_5xx(
    api_schema: schemathesis.BaseSchema, path: str, method: str
) -> None:
    """Schemathesis' three phases, as its CLI runs them: the document's examples, boundary
    values of every parameter (coverage: e.g. an offset of 2**63), then random requests, both
    valid and invalid ones."""
    operation = api_schema[path][method]

    def no_5xx(case: Case) -> None:
        # A loaded machine may take seconds over one request; a 5xx is the finding, not time.
        case.call_and_validate(checks=[not_a_server_error], timeout=120)

    test = create_test(
        operation=operation,
        test_func=no_5xx,
        config=HypothesisTestConfig(
            project=api_schema.config,
            modes=list(HypothesisTestMode),
            settings=settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        ),
    )
    test()
