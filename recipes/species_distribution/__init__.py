"""Species distribution: LightGBM tuned by hyperopt, one presence model per species and site.

Ported from the biodiversity team's Azure ML pipeline (prep, train, score, train-to-deploy),
which a shell loop ran once per candidate species. Here one run models one species; a run
group over a site has one member per species (``entity=<species>``, ``species=<species>``),
so each species gets its own registered model and champion.

- ``aggregate``: the site's features table joined with the species' gold table on
  ``gbifid``, target binarised (``aggregate.py``; layout in ``tables.py``).
- ``split``: stratified, seeded train / test (/ validation) (``split.py``).
- ``train``: hyperopt TPE over a LightGBM search space, trials scored by stratified k-fold
  ROC-AUC and run in parallel on the stage's cores, every trial an MLflow child run; scored on
  the test rows; refit on all rows (``training.py``, ``tuning.py``).

The registered model (sklearn flavour, ``model.py``) takes raw feature rows — text categories,
integer and float columns as a features table holds them — and ``mlflow.pyfunc`` returns
``[P(ABSENT), P(PRESENT)]`` per row. Primary metric: test ROC-AUC, promoted only at
``MIN_ROC_AUC`` or above.

Importing this package is cheap: pandas, scikit-learn, LightGBM, hyperopt and matplotlib are
imported by the stage functions that use them.
"""

from __future__ import annotations

from recipes.base import QualityGate, Recipe, lazy, pinned
from recipes.species_distribution.params import (
    AGGREGATION_PARAMS,
    SPLIT_PARAMS,
    TRAIN_PARAMS,
    SpeciesDistributionParams,
)

__all__ = ["SpeciesDistributionParams", "recipe"]

# Promotion floor: clearly better than chance at ranking presences above absences.
MIN_ROC_AUC = 0.7

recipe = Recipe(
    name="species_distribution",
    version="1.0.0",
    description=(
        "LightGBM presence/absence model per species, tuned by hyperopt (TPE, stratified "
        "k-fold ROC-AUC); presence probability from raw GBIF feature rows"
    ),
    params_model=SpeciesDistributionParams,
    primary_metric="roc_auc",
    greater_is_better=True,
    compute="cpu",
    aggregate=lazy("recipes.species_distribution.aggregate:aggregate"),
    split=lazy("recipes.species_distribution.split:split"),
    train=lazy("recipes.species_distribution.training:train"),
    write_sample_data=lazy("recipes.species_distribution.sample_data:write_sample_data"),
    quality_gate=QualityGate({"roc_auc": (">=", MIN_ROC_AUC)}),
    pip_requirements=pinned("lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "pydantic"),
    stage_params={
        "aggregation": AGGREGATION_PARAMS,
        "split": SPLIT_PARAMS,
        "train": TRAIN_PARAMS,
    },
)
