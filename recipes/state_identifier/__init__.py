"""State identifier: unsupervised operating-state detection on multi-sensor machine time series.

Ported from the AzureML "State Identifier" use case: raw sensor readings are cleaned (gap
filling, uninformative columns dropped, row-wise summaries added), cut into fixed-size windows,
summarised per window (mean, std, min, max, slope, ...), scaled and clustered with KMeans
(3 states by default). The registered model is one scikit-learn ``Pipeline`` whose ``predict``
takes raw readings and returns one state (cluster label) per window. Scored on the training
windows themselves with the silhouette score (primary), the Dunn index and inertia.

Saving the model in MLflow's default skops format needs ``SKOPS_TRUSTED_TYPES`` passed as
``skops_trusted_types`` (the custom transformers are not trusted by default).
"""

from __future__ import annotations

from recipes.base import QualityGate, Recipe, lazy, pinned
from recipes.state_identifier.params import StateIdentifierParams

__all__ = ["StateIdentifierParams", "recipe"]

MIN_SILHOUETTE = 0.2


recipe = Recipe(
    name="state_identifier",
    version="1.0.0",
    description=(
        "KMeans operating-state detection on windows of multi-sensor machine time series "
        "(unsupervised; one cluster label per window)"
    ),
    params_model=StateIdentifierParams,
    primary_metric="silhouette",
    greater_is_better=True,
    compute="cpu",
    # pandas and scikit-learn are imported by the first stage that runs here.
    aggregate=lazy("recipes.state_identifier.aggregate:aggregate"),
    split=lazy("recipes.state_identifier.training:split"),
    train=lazy("recipes.state_identifier.training:train"),
    write_sample_data=lazy("recipes.state_identifier.sample_data:write_sample_data"),
    quality_gate=QualityGate({"silhouette": (">=", MIN_SILHOUETTE)}),
    pip_requirements=pinned("scikit-learn", "pandas", "numpy", "scipy", "pydantic"),
    # Aggregation only orders by the timestamp column and split keeps every row; the
    # preprocessing and clustering params are all train's.
    stage_params={"aggregation": ("timestamp_column",), "split": ()},
)
