"""Parameters of the species distribution recipe; ``{}`` works on a site with one gold table.

A run models one species of one site. A run group over a site has one member per species,
each with ``entity=<species>`` and the param ``species=<species>``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from recipes.base import RecipeParams
from recipes.species_distribution.search_space import SearchSpace, parse_search_space

DEFAULT_SEARCH_SPACE_FILE = "lgbm_params.yml"

# The params each stage reads: a stage's cache key covers only these, so a run that changes
# only tuning (max_evals, the search space ...) reuses the aggregation and the split.
AGGREGATION_PARAMS = (
    "species",
    "features_file",
    "gold_dir",
    "id_column",
    "target_column",
    "drop_columns",
    "categorical_columns",
    "search_space_file",
)
SPLIT_PARAMS = ("test_fraction", "validation_fraction", "seed")
TRAIN_PARAMS = (
    "search_space",
    "max_evals",
    "n_folds",
    "early_stopping_rounds",
    "no_progress_trials",
    "max_parallel_trials",
    "seed",
)


class SpeciesDistributionParams(RecipeParams):
    # -- aggregation: which tables, and how to read them ---------------------------------------
    species: str | None = Field(
        default=None,
        description=(
            "the species to model: its gold table is <gold_dir>/<species>.csv|.parquet (case, "
            "spaces and hyphens do not matter: 'Lynx lynx' finds lynx_lynx.csv); None: the "
            "site's only gold table"
        ),
        max_length=200,
    )
    features_file: str = Field(
        default="features",
        description="the site's features table: a file name, or a stem tried as .parquet, .csv",
        min_length=1,
        max_length=200,
    )
    gold_dir: str = Field(
        default="gold", description="folder of per-species gold tables", max_length=200
    )
    id_column: str = Field(default="gbifid", min_length=1, max_length=200)
    target_column: str = Field(
        default="presence",
        description="gold column holding PRESENT / ABSENT (any letter case)",
        min_length=1,
        max_length=200,
    )
    drop_columns: tuple[str, ...] = Field(
        default=("decimallatitude", "decimallongitude"),
        description=(
            "feature columns not to learn from; coordinates by default, which would let the "
            "model memorise places instead of learning habitat"
        ),
        max_length=1000,
    )
    categorical_columns: tuple[str, ...] = Field(
        default=(),
        description=(
            "numeric-coded columns to treat as categories (e.g. land cover codes); text "
            "columns are categorical anyway"
        ),
        max_length=1000,
    )
    search_space_file: str | None = Field(
        default=None,
        description=(
            "the tuning search space (YAML or JSON) in the site folder, which must exist; "
            f"None: {DEFAULT_SEARCH_SPACE_FILE} when the site has one. An inline "
            "search_space overrides it"
        ),
        min_length=1,
        max_length=200,
    )
    # -- split --------------------------------------------------------------------------------
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    validation_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="an extra held-out set, scored besides test"
    )
    seed: int = Field(default=0, ge=0, description="seeds the split, the folds, TPE, LightGBM")
    # -- train --------------------------------------------------------------------------------
    search_space: SearchSpace | None = Field(
        default=None,
        description=(
            "inline search space, as lgbm_params.yml would hold it (object or YAML/JSON "
            "text): initial_guess + tune; overrides the site's file"
        ),
    )
    max_evals: int = Field(default=50, ge=1, le=10_000, description="hyperopt trials")
    n_folds: int = Field(default=5, ge=2, le=50, description="stratified k-fold per trial")
    early_stopping_rounds: int = Field(
        default=50, ge=1, le=10_000, description="LightGBM rounds without ROC-AUC progress"
    )
    no_progress_trials: int | None = Field(
        default=None, ge=1, description="stop tuning after this many trials without a new best"
    )
    max_parallel_trials: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="processes evaluating folds at once; default: the cores the stage may use",
    )

    @field_validator("search_space", mode="before")
    @classmethod
    def _parse_search_space(cls, value: Any) -> Any:
        if value is None or isinstance(value, SearchSpace):
            return value
        return parse_search_space(value, source="search_space")

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SpeciesDistributionParams:
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise ValueError(
                f"test_fraction + validation_fraction = "
                f"{self.test_fraction + self.validation_fraction:g} leaves too little to train "
                "on; keep the sum below 0.9"
            )
        overlap = sorted(set(self.drop_columns) & set(self.categorical_columns))
        if overlap:
            raise ValueError(f"columns both dropped and categorical: {overlap}")
        return self


def coerce_params(params: RecipeParams | None) -> SpeciesDistributionParams:
    """The stage functions accept any ``RecipeParams``; re-validate foreign ones as ours."""
    if isinstance(params, SpeciesDistributionParams):
        return params
    if params is None:
        return SpeciesDistributionParams()
    return SpeciesDistributionParams.model_validate(params.model_dump())
