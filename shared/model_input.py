"""The registered model's ``mlflow.pyfunc`` face: real data in, the reason first on bad data.

MLflow enforces a model's input signature before the model sees a batch, and it refuses an
``int64`` column where the signature says ``double`` (it widens ``int8`` to ``int32`` only, and
``int64`` when every value is 0 or 1) and any integer tensor where a float tensor is declared:
raw sensor readings and pixels are often ``int64``/``uint8``. Its error then starts with the
whole batch printed (``Failed to enforce schema of data '<DataFrame>' ...``) and names the
reason at the end.

The model is saved by its own flavour (``mlflow.sklearn.load_model``, ``mlflow.lightgbm...``
load it as ever; same files, signature and input example); only its ``python_function`` entry
in ``MLmodel`` names this module as its loader (MLflow's custom-loader contract,
``mlflow.pyfunc.add_to_model``), this file shipped in the model's ``code/`` directory as
``retrainer_model_input``. ``_load_pyfunc`` loads the flavour's own pyfunc implementation and
wraps it in ``ConformingModel``, which:

- casts integer and boolean columns (and tensors) to the declared floating type, which loses
  nothing a sensor reading holds (``int64`` above 2**53 is not a reading);
- checks the rest with MLflow's own rules (``mlflow.models.validate_schema``: missing columns,
  strings where numbers are declared, a tensor's shape) and raises ``MlflowException`` whose
  message is the reason (``Incompatible input types for column rpm. ...``), never the batch.

MLflow skips its own enforcement only for a signature it marks as the model's to enforce
(``is_signature_from_type_hint`` in ``MLmodel``), which no public call sets for a signature
that names columns; ``mark_model_enforced`` sets it. The cost: ``mlflow models serve`` then
takes ``{"inputs": [{"column": value, ...}]}`` (records) or ``{"inputs": {"column": [values]}}``
only, which the model's ``serving_input_example.json`` shows.

This module imports MLflow at import time: only the tracking adapter (when it logs a model) and
MLflow (when it loads one) import it. It imports nothing else of this project.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, validate_schema
from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

LOADER_MODULE = "retrainer_model_input"
# The flavour's own python_function entry, kept in ours under these keys.
NATIVE_LOADER = "native_loader_module"
NATIVE_DATA = "native_data"
NATIVE_PREDICT_FN = "native_predict_fn"
_FLOAT_TYPES = (DataType.double, DataType.float)


class ConformingModel:
    """The flavour's pyfunc implementation, fed batches that fit the signature."""

    def __init__(self, native: Any, schema: Schema | None, predict_fn: str) -> None:
        self._native = native
        self._schema = schema
        self._predict = getattr(native, predict_fn)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if self._schema is not None:
            data = conform(data, self._schema)
        return self._predict(data, params=params) if params else self._predict(data)

    def get_raw_model(self) -> Any:
        # ``PyFuncModel.get_raw_model`` reaches the flavour's model through its implementation.
        return self._native.get_raw_model()


def _load_pyfunc(path: str, model_config: Any = None) -> ConformingModel:
    """MLflow's loader-module entry point: ``path`` is the model's directory (our entry has no
    ``data`` key)."""
    meta = Model.load(os.path.join(path, "MLmodel"))
    conf = meta.flavors["python_function"]
    native: ModuleType = importlib.import_module(conf[NATIVE_LOADER])
    data = conf.get(NATIVE_DATA)
    data_path = os.path.join(path, data) if data else path
    impl = (
        native._load_pyfunc(data_path, model_config)
        if model_config
        else native._load_pyfunc(data_path)
    )
    return ConformingModel(impl, meta.get_input_schema(), conf.get(NATIVE_PREDICT_FN, "predict"))


def conform(data: Any, schema: Schema) -> Any:
    """``data`` as the model's signature declares it; integer inputs widened to declared
    floats; ``MlflowException`` naming the reason (and only that) when it cannot be."""
    try:
        if schema.is_tensor_spec():
            data = _widen_tensors(data, schema)
        else:
            data = _widen_columns(_as_frame(data), schema)
        validate_schema(data, schema)
        return _select_columns(data, schema)
    except MlflowException as error:
        raise MlflowException.invalid_parameter_value(_reason(error.message, schema)) from None
    except (TypeError, ValueError, KeyError) as error:
        raise MlflowException.invalid_parameter_value(_reason(str(error), schema)) from None


def _reason(message: str, schema: Schema) -> str:
    # MLflow's messages may quote the batch; keep the first line, bounded.
    first = message.strip().splitlines()[0] if message.strip() else "invalid input"
    first = first if len(first) <= 500 else first[:500] + "..."
    return f"{first} (the model expects {_describe(schema)})"


def _describe(schema: Schema) -> str:
    if schema.is_tensor_spec():
        specs = [
            f"{spec.type} tensor of shape {tuple(spec.shape)}"
            for spec in schema.inputs
            if isinstance(spec, TensorSpec)
        ]
        return ", ".join(specs)
    columns = [f"{spec.name}: {_type_name(spec.type)}" for spec in schema.inputs]
    shown = ", ".join(columns[:20]) + (
        f", ... ({len(columns)} columns)" if len(columns) > 20 else ""
    )
    return f"columns {shown}"


def _type_name(kind: Any) -> str:
    return kind.name if isinstance(kind, DataType) else str(kind)


def _as_frame(data: Any) -> Any:
    # The scoring server hands over the JSON ``inputs``: records or a column mapping.
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        return pd.DataFrame.from_records(data)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return pd.DataFrame(data)
    return data


def _column_specs(schema: Schema) -> list[ColSpec]:
    return [s for s in schema.inputs if isinstance(s, ColSpec) and s.name is not None]


def _widen_columns(data: Any, schema: Schema) -> Any:
    if not isinstance(data, pd.DataFrame):
        return data
    widened: dict[str, Any] = {}
    for spec in _column_specs(schema):
        name = spec.name
        if name is None or name not in data.columns or not isinstance(spec.type, DataType):
            continue
        column, declared = data[name], spec.type.to_numpy()
        dtype = column.dtype
        if not isinstance(dtype, np.dtype) or dtype == declared:
            continue
        # Integers and booleans to a declared float, and the upcasts MLflow itself makes
        # (int32 to long, float32 to double), which the flavour's model would otherwise get
        # unconverted.
        if (spec.type in _FLOAT_TYPES and dtype.kind in "iub") or (
            dtype.kind == declared.kind and dtype.itemsize < declared.itemsize
        ):
            widened[name] = column.astype(declared)
    if not widened:
        return data
    data = data.copy(deep=False)
    for name, column in widened.items():
        data[name] = column
    return data


def _select_columns(data: Any, schema: Schema) -> Any:
    # The declared columns in the declared order, extra ones dropped: MLflow's enforcement does
    # the same, and a model fitted on named features refuses anything else.
    names = [spec.name for spec in _column_specs(schema)]
    if not isinstance(data, pd.DataFrame) or not names or list(data.columns) == names:
        return data
    present = [name for name in names if name in data.columns]
    return data[present]


def _widen_tensors(data: Any, schema: Schema) -> Any:
    specs = [spec for spec in schema.inputs if isinstance(spec, TensorSpec)]
    if len(specs) != 1:
        return data
    expected = specs[0].type
    if isinstance(data, list):  # the scoring server's JSON ``inputs``
        data = np.asarray(data)
    if not isinstance(data, np.ndarray):
        return data
    if expected.kind == "f" and data.dtype.kind in "iub":
        return data.astype(expected)
    return data


def make_conforming(path: Path, model: Model) -> None:
    """Turns the flavour's saved model at ``path`` (whose ``MLmodel`` is ``model``) into one
    whose pyfunc face conforms its input; the flavour's own entry and files are untouched."""
    native = dict(model.flavors["python_function"])
    code = native.get("code") or "code"
    (path / code).mkdir(exist_ok=True)
    shutil.copyfile(__file__, path / code / f"{LOADER_MODULE}.py")
    extra = {
        key: value
        for key, value in native.items()
        if key not in ("loader_module", "data", "code", "env", "python_version", "predict_fn")
    }
    extra[NATIVE_LOADER] = native["loader_module"]
    extra[NATIVE_PREDICT_FN] = native.get("predict_fn", "predict")
    if native.get("data"):
        extra[NATIVE_DATA] = native["data"]
    del model.flavors["python_function"]
    env = native.get("env") or {}
    mlflow.pyfunc.add_to_model(
        model,
        loader_module=LOADER_MODULE,
        code=code,
        conda_env=env.get("conda") if isinstance(env, dict) else None,
        python_env=env.get("virtualenv") if isinstance(env, dict) else None,
        **extra,
    )
    mark_model_enforced(model)
    _write_serving_example(path, model)
    model.save(str(path / "MLmodel"))


def mark_model_enforced(model: Model) -> None:
    """Marks the signature as one the model enforces itself (see the module doc): MLflow's
    ``Model.from_dict`` reads ``is_signature_from_type_hint`` from ``MLmodel``; no public call
    writes it for a signature inferred from an example."""
    if model.signature is not None:
        model.signature._is_signature_from_type_hint = True


def _write_serving_example(path: Path, model: Model) -> None:
    # The flavour wrote a ``dataframe_split`` request; a model that enforces its own signature
    # is served ``{"inputs": ...}``.
    info = model.saved_input_example_info or {}
    serving = info.get("serving_input_path")
    if not serving:
        return
    example = model.load_input_example(str(path))
    if isinstance(example, pd.DataFrame):
        inputs: Any = json.loads(example.to_json(orient="records"))
    elif isinstance(example, np.ndarray):
        inputs = example.tolist()
    else:
        (path / serving).unlink(missing_ok=True)
        del info["serving_input_path"]
        return
    (path / serving).write_text(json.dumps({"inputs": inputs}, indent=2))


__all__ = [
    "LOADER_MODULE",
    "ConformingModel",
    "conform",
    "make_conforming",
    "mark_model_enforced",
]
