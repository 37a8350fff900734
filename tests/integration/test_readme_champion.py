"""The README's five lines that load the champion work as written: the lines are taken from the
README, run in a fresh interpreter in a directory holding an embedded store (``.retrainer/``)
whose ``state_identifier`` champion was trained by the recipe, on integer sensor readings; and
``mlflow.sklearn.load_model`` loads the same champion as its scikit-learn pipeline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from shared.recipe_registry import get_recipe
from shared.tracking import MlflowRegistry

README = Path(__file__).resolve().parents[2] / "README.md"
RECIPE = "state_identifier"


def readme_champion_lines() -> str:
    text = README.read_text()
    found = re.search(r"<!-- champion-lines -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README marks the champion lines with <!-- champion-lines -->"
    return found.group(1)


def test_the_readme_shows_five_lines() -> None:
    lines = [line for line in readme_champion_lines().splitlines() if line.strip()]
    assert len(lines) == 5
    assert "models:/state_identifier@champion" in lines[2]


def test_the_readme_lines_load_the_champion_and_predict_integer_readings(tmp_path: Path) -> None:
    state = tmp_path / ".retrainer"
    registry = MlflowRegistry(
        f"sqlite:///{state / 'mlflow.db'}", artifact_root=state / "mlartifacts"
    )
    recipe = get_recipe(RECIPE)
    params = recipe.parse_params({})
    work = tmp_path / "work"
    for name in ("raw", "dataset", "split", "train"):
        (work / name).mkdir(parents=True)
    recipe.write_sample_data(work / "raw", 0)
    recipe.aggregate(work / "raw", work / "dataset", params)
    recipe.split(work / "dataset", work / "split", params)
    result = recipe.train(work / "split", work / "train", params)
    record = registry.log_training(
        experiment_name=RECIPE,
        correlation_id="readme",
        result=result,
        pip_requirements=recipe.pip_requirements,
        tags={},
    )
    version = registry.create_model_version(
        RECIPE, model_uri=record.model_uri, run_id=record.run_id, correlation_id="readme", tags={}
    )
    registry.promote(RECIPE, version.version, tags={})

    raw = pd.read_csv(sorted((work / "raw").rglob("*.csv"))[0]).head(300)
    sensors = [c for c in raw.columns if c != "timestamp"]
    # Raw sensor data as a logger writes it: whole numbers, read back by pandas as int64.
    raw[sensors] = raw[sensors].fillna(0).round().astype("int64")
    raw.to_csv(tmp_path / "readings.csv", index=False)
    assert (pd.read_csv(tmp_path / "readings.csv")[sensors].dtypes == "int64").all()

    done = subprocess.run(
        [sys.executable, "-c", readme_champion_lines()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    states = re.findall(r"-?\d+", done.stdout.strip().splitlines()[-1])
    assert states, done.stdout

    # The flavour's own loader loads the same champion: the scikit-learn pipeline itself.
    native = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow; mlflow.set_tracking_uri('sqlite:///.retrainer/mlflow.db'); "
            f"m = mlflow.sklearn.load_model('models:/{RECIPE}@champion'); "
            "print(type(m).__module__, type(m).__name__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert native.returncode == 0, native.stderr[-3000:]
    assert native.stdout.strip().splitlines()[-1].startswith("sklearn.")
