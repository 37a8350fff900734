"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Stacks started by tests import a recipe's libraries with its first stage, as before workers
# warmed up (RETRAINER_WARM_UP): most tests run the small fixture recipes and would otherwise
# pay every built-in recipe's imports at start-up. The warm-up has tests of its own.
os.environ.setdefault("RETRAINER_WARM_UP", "false")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Azurite blob emulator for the session: its connection string (well-known
    development account). Fails, not skips, when Azurite is not installed: `make install`."""
    from tests.azurite import missing_reason, running_azurite

    problem = missing_reason()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    with running_azurite(tmp_path_factory.mktemp("azurite")) as emulator:
        yield emulator.connection_string


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A multi-process test (``slow``) without a timeout of its own gets the hang guard of
    ``tests/waiting.py`` with room to spare instead of pytest-timeout's default: its waits
    are event waits up to ``WAIT_S``, and a busy machine must not fail it at a fixed limit."""
    from tests.waiting import WAIT_S

    guard = max(float(config.getini("timeout") or 0), WAIT_S * 1.5)
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(guard))
