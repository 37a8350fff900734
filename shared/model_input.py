"""The registered model's ``mlflow.pyfunc`` face: real data in, the reason first on bad data.

MLflow enforces a model's input signature before the model sees a batch, and it refuses an
``int64`` column where the signature says ``double`` (unless every value is 0 or 1) and an
integer image where a tensor says ``float32``: raw sensor readings and pixels are often
integers. Its error then starts with the whole batch printed (``Failed to enforce schema of data
'<DataFrame>' ...``) and names the reason at the end.

``ConformingModel`` is a ``mlflow.pyfunc.PythonModel`` around the flavour's own saved model (an
artifact, loaded with ``mlflow.pyfunc`` from its own directory, so it keeps its serialisation
and ``predict`` function). It carries the same signature as the flavour would (the MLmodel
file, ``get_model_info(...).signature`` and the MLflow UI show it unchanged), marked so that
MLflow leaves enforcing it to the model (``is_signature_from_type_hint``); the model then:

- casts integer and boolean columns (and tensors) to the declared floating type, which loses
  nothing a sensor reading holds (``int64`` above 2**53 is not a reading);
- enforces the rest of the signature with MLflow's own rules (missing columns, strings where
  numbers are declared, a tensor's shape), and raises ``MlflowException`` whose message is the
  reason (``Incompatible input types for column rpm. ...``), never the batch.

A model served by ``mlflow models serve`` then takes ``{"inputs": [{"column": value, ...}]}``
(records) or ``{"inputs": {"column": [values]}}``.

This module imports MLflow at import time: only the tracking adapter (when it logs a model) and
MLflow (when it loads one, from the model's ``code`` directory) import it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

NATIVE_ARTIFACT = "native_model"
SCHEMA_CONFIG = "retrainer_input_schema"
_FLOAT_TYPES = (DataType.double, DataType.float)


class ConformingModel(PythonModel):
    """Loads the flavour's model from the ``native_model`` artifact; conforms each batch."""

    def load_context(self, context: Any) -> None:
        # The native model's own MLmodel names its loader and predict function; it has no
        # signature of its own, so MLflow checks nothing twice.
        self._native = mlflow.pyfunc.load_model(
            context.artifacts[NATIVE_ARTIFACT], suppress_warnings=True
        )
        schema = (context.model_config or {}).get(SCHEMA_CONFIG)
        self._schema = Schema.from_json(schema) if schema else None

    # ``pd.DataFrame``: a hint MLflow infers nothing from and converts nothing by (an array,
    # records or a column mapping arrive as they are and ``conform`` handles them).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, object] | None = None
    ) -> Any:
        data = conform(model_input, self._schema) if self._schema is not None else model_input
        return self._native.predict(data, params=params) if params else self._native.predict(data)


def conform(data: Any, schema: Schema) -> Any:
    """``data`` as the model's signature declares it; integer inputs widened to declared
    floats; ``MlflowException`` naming the reason (and only that) when it cannot be."""
    from mlflow.models.utils import _enforce_schema

    try:
        if schema.is_tensor_spec():
            data = _widen_tensors(data, schema)
        else:
            data = _widen_columns(_as_frame(data), schema)
        return _enforce_schema(data, schema)
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


def _widen_columns(data: Any, schema: Schema) -> Any:
    if not isinstance(data, pd.DataFrame):
        return data
    widened: dict[str, Any] = {}
    for spec in schema.inputs:
        if not isinstance(spec, ColSpec) or spec.name is None or spec.name not in data.columns:
            continue
        column, kind = data[spec.name], spec.type
        if (
            isinstance(kind, DataType)
            and kind in _FLOAT_TYPES
            and (
                pd.api.types.is_integer_dtype(column.dtype)
                or pd.api.types.is_bool_dtype(column.dtype)
            )
        ):
            widened[spec.name] = column.astype(kind.to_numpy())
    if not widened:
        return data
    data = data.copy(deep=False)
    for name, column in widened.items():
        data[name] = column
    return data


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


def conforming_signature(signature: ModelSignature) -> ModelSignature:
    """The flavour's signature, unchanged, marked for the model to enforce (see module doc)."""
    marked = ModelSignature(
        inputs=signature.inputs, outputs=signature.outputs, params=signature.params
    )
    marked._is_signature_from_type_hint = True
    return marked


def schema_config(signature: ModelSignature) -> dict[str, str]:
    return {SCHEMA_CONFIG: signature.inputs.to_json()} if signature.inputs is not None else {}


__all__ = [
    "NATIVE_ARTIFACT",
    "ConformingModel",
    "conform",
    "conforming_signature",
    "schema_config",
]
