"""The registered model's pyfunc face (``shared.model_input``): integer readings where the
signature declares floats, the reason first when a batch does not fit, the signature intact,
and the flavour's own loader loading the flavour's model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from sklearn.linear_model import LinearRegression

from recipes.base import TrainResult
from shared.recipe import ModelFlavor
from shared.tracking import MlflowRegistry

FRAME = pd.DataFrame({"temperature": [20.5, 21.0, 35.5, 40.0], "rpm": [600.0, 610.0, 900.0, 950.0]})
TARGET = [0.0, 0.1, 1.0, 1.1]


def _array(predicted: object) -> np.ndarray:
    return np.asarray(predicted, dtype="float64")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MlflowRegistry:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowRegistry(f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "artifacts")


def _logged(
    registry: MlflowRegistry,
    example: object,
    fit_on: object,
    name: str,
    model: Any = None,
    flavor: ModelFlavor = "sklearn",
) -> str:
    model = (model or LinearRegression()).fit(fit_on, TARGET)
    result = TrainResult(model=model, flavor=flavor, metrics={}, input_example=example)
    record = registry.log_training(
        experiment_name="model-input",
        correlation_id=name,
        result=result,
        pip_requirements=["scikit-learn"],
        tags={},
    )
    mlflow.set_tracking_uri(registry.tracking_uri)
    return record.model_uri


@pytest.fixture(scope="module")
def columns_model(registry: MlflowRegistry) -> tuple[str, PyFuncModel]:
    uri = _logged(registry, FRAME.head(2), FRAME, "columns")
    return uri, mlflow.pyfunc.load_model(uri)


def test_integer_readings_where_doubles_are_declared(
    columns_model: tuple[str, PyFuncModel],
) -> None:
    _, model = columns_model
    readings = pd.DataFrame({"temperature": [20, 40], "rpm": [600, 950]}, dtype="int64")
    expected = _array(model.predict(readings.astype("float64")))
    assert np.allclose(_array(model.predict(readings)), expected)
    # Column order and extra columns: as MLflow's own enforcement treats them.
    shuffled = readings[["rpm", "temperature"]].assign(note="x")
    assert np.allclose(_array(model.predict(shuffled)), expected)
    # The scoring server's JSON ``inputs``: records.
    assert np.allclose(_array(model.predict(readings.to_dict(orient="records"))), expected)


def test_the_signature_is_the_flavours(
    columns_model: tuple[str, PyFuncModel],
) -> None:
    uri, _ = columns_model
    signature = mlflow.models.get_model_info(uri).signature
    assert signature is not None
    assert [(c.name, c.type.name) for c in signature.inputs.inputs] == [
        ("temperature", "double"),
        ("rpm", "double"),
    ]


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        (FRAME[["rpm"]], "Model is missing inputs ['temperature']"),
        (FRAME.assign(rpm=["fast"] * 4), "Incompatible input types for column rpm"),
    ],
)
def test_errors_start_with_the_reason_and_never_dump_the_batch(
    columns_model: tuple[str, PyFuncModel], batch: pd.DataFrame, reason: str
) -> None:
    _, model = columns_model
    with pytest.raises(MlflowException) as caught:
        model.predict(batch)
    message = caught.value.message
    assert message.startswith(reason), message
    assert "temperature: double" in message, "names what the model expects"
    assert "20.5" not in message and "fast" not in message, "no values from the batch"
    assert len(message) < 1000


def test_integer_tensors_where_a_float_tensor_is_declared(registry: MlflowRegistry) -> None:
    values = FRAME.to_numpy(dtype="float32")
    uri = _logged(registry, values[:2], values, "tensor")
    model = mlflow.pyfunc.load_model(uri)
    pixels = np.array([[20, 60], [40, 95]], dtype="uint8")
    expected = _array(model.predict(pixels.astype("float32")))
    assert np.allclose(_array(model.predict(pixels)), expected)
    with pytest.raises(MlflowException) as caught:
        model.predict(np.zeros((2, 3), dtype="float32"))
    assert caught.value.message.startswith("Shape of input"), caught.value.message


def test_a_model_without_an_input_example_keeps_its_flavour(
    registry: MlflowRegistry, tmp_path: Path
) -> None:
    uri = _logged(registry, None, FRAME, "plain")
    assert "sklearn" in mlflow.models.get_model_info(uri).flavors


def test_the_flavours_loader_loads_the_flavours_model(
    columns_model: tuple[str, PyFuncModel],
) -> None:
    uri, model = columns_model
    native = mlflow.sklearn.load_model(uri)
    assert isinstance(native, LinearRegression)
    assert np.allclose(_array(model.predict(FRAME)), native.predict(FRAME))
    assert isinstance(model.get_raw_model(), LinearRegression)


def test_a_lightgbm_model_loads_with_its_flavour_and_takes_integer_readings(
    registry: MlflowRegistry,
) -> None:
    import lightgbm

    regressor = lightgbm.LGBMRegressor(n_estimators=5, min_child_samples=1, verbose=-1)
    uri = _logged(registry, FRAME.head(2), FRAME, "lightgbm", regressor, "lightgbm")
    native = mlflow.lightgbm.load_model(uri)
    assert isinstance(native, lightgbm.LGBMRegressor)
    readings = pd.DataFrame({"temperature": [20, 40], "rpm": [600, 950]}, dtype="int64")
    predicted = mlflow.pyfunc.load_model(uri).predict(readings)
    assert np.allclose(_array(predicted), native.predict(readings.astype("float64")))


def test_the_served_model_takes_its_serving_example_and_integer_readings(
    columns_model: tuple[str, PyFuncModel], tmp_path: Path
) -> None:
    """Through ``mlflow models serve``'s own app (``scoring_server.init``)."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    uri, model = columns_model
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    example = (local / "serving_input_example.json").read_text()
    assert set(json.loads(example)) == {"inputs"}
    with TestClient(scoring_server.init(model)) as server:

        def served(body: str) -> np.ndarray:
            response = server.post(
                "/invocations", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 200, response.text
            return _array(response.json()["predictions"])

        assert np.allclose(served(example), _array(model.predict(FRAME.head(2))))
        expected = model.predict(pd.DataFrame({"temperature": [20.0], "rpm": [600.0]}))
        readings = json.dumps({"inputs": [{"temperature": 20, "rpm": 600}]})
        assert np.allclose(served(readings), _array(expected))
        refused = server.post(
            "/invocations",
            content=json.dumps({"inputs": [{"rpm": 600}]}),
            headers={"Content-Type": "application/json"},
        )
        assert refused.status_code == 400
        # The server prefixes the request it failed on ("Failed to predict data ..."); the
        # model's part is the reason.
        assert "Error: Model is missing inputs ['temperature']" in refused.json()["message"]
