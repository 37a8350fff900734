"""Parameters of the state identifier recipe; ``{}`` gives a working configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recipes.base import RecipeParams

FillMethod = Literal["interpolate", "ffill", "bfill"]
WindowFeature = Literal["mean", "std", "min", "max", "range", "slope", "last"]
# Level features by default: "std"/"slope" (and "range") are large only in the few windows that
# straddle a state change, which makes those windows outliers that k-means then spends a cluster
# on (on the sample data: one cluster of ~5 transition windows, ramp merged into idle). Add them
# when the states differ in variability or trend rather than level.
DEFAULT_WINDOW_FEATURES: tuple[WindowFeature, ...] = ("mean", "min", "max")


class StateIdentifierParams(RecipeParams):
    timestamp_column: str = "timestamp"
    # Preprocessing.
    fill_method: FillMethod = "interpolate"
    drop_constant_columns: bool = True
    drop_duplicate_columns: bool = True
    row_summaries: bool = Field(
        default=True, description="add row-wise mean/std of the standardised sensors as two columns"
    )
    window_size: int = Field(default=30, ge=2, description="rows per window (one prediction each)")
    step: int = Field(
        default=30, ge=1, description="rows between window starts; < window_size overlaps"
    )
    features: tuple[WindowFeature, ...] = Field(default=DEFAULT_WINDOW_FEATURES, min_length=1)
    # Clustering.
    n_clusters: int = Field(default=3, ge=2, le=100)
    n_init: int = Field(default=10, ge=1)
    max_iter: int = Field(default=300, ge=1)
    random_state: int = 0
    # Evaluation: silhouette and Dunn are O(n^2); larger inputs are evaluated on a sample.
    max_rows_for_silhouette: int = Field(default=5000, ge=10)
    max_rows_for_dunn: int = Field(default=2000, ge=10)
    # Artifacts.
    cluster_plot: bool = Field(
        default=True,
        description="log the windows' PCA scatter plot by cluster (clusters.png; ~0.1-0.2 s a run)",
    )

    @model_validator(mode="after")
    def _distinct_features(self) -> StateIdentifierParams:
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features must not repeat: {list(self.features)}")
        return self


def coerce_params(params: RecipeParams | None) -> StateIdentifierParams:
    """The stage functions accept any ``RecipeParams``; re-validate foreign ones as ours."""
    if isinstance(params, StateIdentifierParams):
        return params
    if params is None:
        return StateIdentifierParams()
    return StateIdentifierParams.model_validate(params.model_dump())
