"""No service imports a recipe's ML stack (or MLflow) to start: each one is built from its
settings in a fresh interpreter, as its ``__main__`` does, and what it imported is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.messages import STAGES

HEAVY = ("pandas", "sklearn", "scipy", "tensorflow", "keras", "torch", "mlflow", "lightgbm")

_WORKER = """
import importlib, sys
from shared.service import build_worker
service = importlib.import_module("services.{stage}")
settings_type = getattr(importlib.import_module("services.{stage}.__main__"), "{settings}")
settings = settings_type(state_dir={state_dir!r})
build_worker(service.build_spec(settings), settings)
print([m for m in {heavy!r} if m in sys.modules])
"""

_COORDINATOR = """
import sys
from coordinator.api import create_app
from coordinator.bootstrap import build_coordinator
from coordinator.settings import CoordinatorSettings
settings = CoordinatorSettings(state_dir={state_dir!r})
create_app(settings)
build_coordinator(settings).close()
print([m for m in {heavy!r} if m in sys.modules])
"""


def _imported(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("stage", STAGES)
def test_a_worker_starts_without_ml_libraries(stage: str, tmp_path: Path) -> None:
    settings = "TrainSettings" if stage == "train" else "WorkerSettings"
    code = _WORKER.format(stage=stage, settings=settings, state_dir=str(tmp_path), heavy=HEAVY)
    assert _imported(code) == "[]"


def test_the_coordinator_starts_without_ml_libraries(tmp_path: Path) -> None:
    assert _imported(_COORDINATOR.format(state_dir=str(tmp_path), heavy=HEAVY)) == "[]"
