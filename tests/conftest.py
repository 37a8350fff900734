"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


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
