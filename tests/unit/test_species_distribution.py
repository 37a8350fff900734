"""The species_distribution recipe's stages as plain functions over directories."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recipes.base import RecipeContext
from recipes.species_distribution import SpeciesDistributionParams
from recipes.species_distribution.aggregate import aggregate
from recipes.species_distribution.dataset import DatasetSchema
from recipes.species_distribution.model import FeatureFrame
from recipes.species_distribution.sample_data import SPECIES, generate, write_sample_data
from recipes.species_distribution.search_space import (
    DEFAULT_RANGES,
    SearchSpaceError,
    parse_search_space,
)
from recipes.species_distribution.split import split
from recipes.species_distribution.training import train
from recipes.species_distribution.tuning import TuningError, tune
from shared.errors import DataValidationError, StageCancelledError
from shared.recipe_registry import get_recipe

# Tiny tuning, so that a whole train stage takes a second or two.
QUICK: dict[str, Any] = {"max_evals": 3, "n_folds": 2, "early_stopping_rounds": 5}
ONE_CORE = RecipeContext(max_workers=1)

TEAM_YAML = """\
initial_guess:
  learning_rate: 0.1
  n_estimators: 300
  num_leaves: 31
  subsample_freq: 1
tune:
  learning_rate: {loguniform: [0.02, 0.3]}
  num_leaves: {logint: [8, 64]}
  boosting_type: {choice: [gbdt, dart]}
"""


def write_site(
    root: Path,
    features: str,
    gold: dict[str, str],
    *,
    features_name: str = "features.csv",
    space: str | None = None,
) -> Path:
    """A site from CSV text: ``gold`` maps file names (in gold/) to their content."""
    (root / "gold").mkdir(parents=True)
    (root / features_name).write_text(features)
    for name, content in gold.items():
        (root / "gold" / name).write_text(content)
    if space is not None:
        (root / "lgbm_params.yml").write_text(space)
    return root


FEATURES = """\
gbifid,decimallatitude,decimallongitude,elevation,habitat
0001,51.0,5.0,10,forest
0002,51.1,5.1,20,meadow
0003,51.2,5.2,30,forest
0003,51.2,5.2,30,forest
0004,51.3,5.3,40,meadow
0005,51.4,5.4,50,
0005,51.4,5.4,55,forest
0006,51.5,5.5,60,forest
"""

GOLD = """\
gbifid,presence
1,PRESENT
00002,absent
3, Present
3,PRESENT
4,
5,ABSENT
6,PRESENT
6,ABSENT
99,PRESENT
"""


def parsed(**params: Any) -> SpeciesDistributionParams:
    return SpeciesDistributionParams.model_validate(params)


def aggregated(tmp_path: Path, **params: Any) -> tuple[pd.DataFrame, DatasetSchema]:
    out = tmp_path / "dataset"
    aggregate(tmp_path / "site", out, parsed(**params))
    return pd.read_parquet(out / "dataset.parquet"), DatasetSchema.read(out)


# -- the recipe -------------------------------------------------------------------------------


def test_the_recipe_is_registered_and_declares_what_each_stage_reads() -> None:
    recipe = get_recipe("species_distribution")
    assert recipe.primary_metric == "roc_auc" and recipe.greater_is_better
    assert recipe.params_read_by("aggregation") >= {"species", "drop_columns"}
    assert "max_evals" not in recipe.params_read_by("aggregation")
    assert "max_evals" not in recipe.params_read_by("split")
    assert recipe.params_read_by("train") >= {"max_evals", "n_folds", "search_space", "seed"}
    assert "species" not in recipe.params_read_by("train"), "the split carries the species"
    assert recipe.quality_gate.failures({"roc_auc": 0.65}) == ["roc_auc=0.65 is not >= 0.7"]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"max_evals": 0}, "max_evals"),
        ({"n_folds": 1}, "n_folds"),
        ({"test_fraction": 0.5, "validation_fraction": 0.45}, "leaves too little"),
        ({"drop_columns": ["a"], "categorical_columns": ["a"]}, "both dropped and categorical"),
        ({"search_space": {"tune": {"objective": {"choice": ["x"]}}}}, "set by the recipe"),
        ({"search_space": "tune: [learning_rate"}, "not valid YAML"),
        ({"speceis": "Lynx lynx"}, "speceis"),
    ],
)
def test_bad_params_are_refused_naming_the_problem(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        parsed(**params)


# -- the search space -------------------------------------------------------------------------


def test_the_team_format_gives_fixed_params_an_initial_guess_and_ranges() -> None:
    space = parse_search_space(TEAM_YAML, source="lgbm_params.yml")

    assert space.fixed == {"n_estimators": 300, "subsample_freq": 1}
    assert space.initial_point() == {
        "learning_rate": 0.1,
        "num_leaves": 31,
        "boosting_type": "gbdt",  # no guess: the first choice
    }
    assert set(space.to_hyperopt()) == {"learning_rate", "num_leaves", "boosting_type"}
    assert space.model_dump(mode="json")["tune"]["num_leaves"] == {"logint": [8, 64]}


def test_a_list_of_names_gets_the_default_ranges_and_defaults_start_inside_them() -> None:
    space = parsed(search_space={"tune": ["learning_rate", "reg_lambda"]}).search_space
    assert space is not None
    assert space.tune["reg_lambda"] == DEFAULT_RANGES["reg_lambda"]
    # LightGBM's default learning rate lies in the range; its reg_lambda (0) does not.
    assert space.initial_point()["learning_rate"] == 0.1
    assert space.initial_point()["reg_lambda"] == pytest.approx(0.1)  # geometric middle
    assert space.fixed == {"n_estimators": 1000}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tune: {num_iterations: {int: [10, 100]}}", "n_estimators"),
        ("tune: {n_jobs: {int: [1, 4]}}", "set by the recipe"),
        ("initial_guess: {num_leaves: 300}\ntune: {num_leaves: {int: [8, 64]}}", "outside"),
        ("tune: {learning_rate: {loguniform: [0, 0.3]}}", "low > 0"),
        ("tune: {learning_rate: {gaussian: [0, 1]}}", "tune.learning_rate"),
        ("tune: {num_leaves: {int: [8.5, 64]}}", "whole-number"),
        ("tune: [learning_rate, foo_bar]", "no default range for \\['foo_bar'\\]"),
        ("initial_guess: {learning_rate: 0.1}", "tune names no parameter"),
        ("- just\n- a list", "expected a mapping"),
    ],
)
def test_search_space_errors_name_the_source_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(SearchSpaceError, match=problem) as caught:
        parse_search_space(text, source="lgbm_params.yml")
    assert str(caught.value).startswith("lgbm_params.yml: ")


# -- aggregation --------------------------------------------------------------------------------


def test_join_and_binarise_rules(tmp_path: Path) -> None:
    write_site(tmp_path / "site", FEATURES, {"lynx_lynx.csv": GOLD})
    data, schema = aggregated(tmp_path)

    # Ids as integers whatever their zeros; 4 has no label, 6 is both (left out), 99 has no
    # features; 3's repeated rows (exact in both tables) count once; 5 keeps its first row.
    assert data["gbifid"].tolist() == [1, 2, 3, 5]
    assert data["presence"].tolist() == [1, 0, 1, 0]
    assert data["elevation"].tolist() == [10, 20, 30, 50]
    assert data["habitat"].tolist()[:3] == ["forest", "meadow", "forest"]
    assert pd.isna(data["habitat"].iloc[3])
    assert "decimallatitude" not in data.columns and "decimallongitude" not in data.columns
    assert schema.species == "lynx_lynx"
    assert schema.feature_columns == ["elevation", "habitat"]
    assert schema.categorical_columns == ["habitat"]
    assert (schema.present, schema.absent) == (2, 2)
    assert schema.dropped_rows == {
        "null_presence": 1,
        "null_feature_ids": 0,
        "null_gold_ids": 0,
        "duplicate_feature_rows": 1,
        "conflicting_feature_ids": 1,
        "duplicate_gold_rows": 1,
        "conflicting_gold_ids": 1,
        "features_without_gold": 2,  # 4 (no label) and 6 (both labels)
        "gold_without_features": 1,
    }


def test_parquet_tables_numeric_categories_and_the_species_by_its_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "gold").mkdir(parents=True)
    pd.DataFrame(
        {"gbifid": [10, 11, 12, 13], "landcover": [10, 20, 10, 30], "ndvi": [0.1, 0.5, 0.2, 0.9]}
    ).to_parquet(site / "features.parquet")
    pd.DataFrame(
        {"gbifid": ["010", "011", "012", "013"], "presence": ["PRESENT", "ABSENT"] * 2}
    ).to_parquet(site / "gold" / "cygnus_buccinator_golddata.parquet")
    (site / "gold" / "lynx_lynx.csv").write_text("gbifid,presence\n10,ABSENT\n")

    data, schema = aggregated(
        tmp_path, species="Cygnus buccinator", categorical_columns=["landcover"]
    )
    assert data["gbifid"].tolist() == [10, 11, 12, 13]
    assert schema.gold_file == "gold/cygnus_buccinator_golddata.parquet"
    assert schema.categorical_columns == ["landcover"]
    assert schema.numeric_columns == ["ndvi"]


@pytest.mark.parametrize(
    ("features", "gold", "params", "message"),
    [
        (
            FEATURES,
            "gbifid,presence\n1,PRESENT\n2,MAYBE\n3,ABSENT\n4,1\n",
            {},
            "gold/lynx_lynx.csv, row 2: presence is 'MAYBE'; expected PRESENT or ABSENT "
            "(and 1 more row(s))",
        ),
        (
            "id,elevation\n1,10\n",
            GOLD,
            {},
            "features.csv: missing the id column 'gbifid'; columns are ['id', 'elevation']",
        ),
        (
            FEATURES,
            "id,presence\n1,PRESENT\n",
            {},
            "gold/lynx_lynx.csv: missing the id column 'gbifid'",
        ),
        (
            FEATURES,
            "gbifid,status\n1,PRESENT\n",
            {},
            "gold/lynx_lynx.csv: missing the presence column 'presence'",
        ),
        (
            FEATURES,
            "gbifid,presence\n1,PRESENT\n2x,ABSENT\n",
            {},
            "gold/lynx_lynx.csv, row 2: gbifid '2x' is not a whole-number id",
        ),
        (
            FEATURES,
            "gbifid,presence\n100,PRESENT\n101,ABSENT\n",
            {},
            "gold/lynx_lynx.csv: no gbifid in common with features.csv (6 ids there, 2 labelled "
            "here): the inner join is empty",
        ),
        (
            FEATURES,
            "gbifid,presence\n1,PRESENT\n2,present\n77,ABSENT\n",
            {},
            "gold/lynx_lynx.csv: all 2 joined rows are PRESENT; a presence/absence model needs "
            "both classes",
        ),
        (
            "gbifid,elevation\n1,10\n2,unknown\n3,12\n4,13\n5,14\n6,15\n7,16\n8,17\n9,18\n10,19\n",
            GOLD,
            {},
            "features.csv, row 2: column 'elevation' holds numbers but also 'unknown'",
        ),
        (FEATURES, GOLD, {"species": "Bufo bufo"}, "no gold table for species 'Bufo bufo'"),
        (
            FEATURES,
            GOLD,
            {"categorical_columns": ["soil"]},
            "features.csv: categorical_columns ['soil'] are not columns of the features",
        ),
        (
            FEATURES,
            GOLD,
            {"search_space_file": "tuning.yml"},
            "tuning.yml: the search space file named by search_space_file is not in the site",
        ),
    ],
)
def test_bad_data_fails_naming_file_and_row(
    tmp_path: Path, features: str, gold: str, params: dict[str, Any], message: str
) -> None:
    write_site(tmp_path / "site", features, {"lynx_lynx.csv": gold})
    with pytest.raises(DataValidationError) as caught:
        aggregated(tmp_path, **params)
    assert str(caught.value).startswith(message)


def test_a_site_with_several_species_needs_the_species_param(tmp_path: Path) -> None:
    write_site(tmp_path / "site", FEATURES, {"lynx_lynx.csv": GOLD, "bufo_bufo.csv": GOLD})
    with pytest.raises(DataValidationError, match=r"2 species .*choose one with the species"):
        aggregated(tmp_path)
    data, schema = aggregated(tmp_path, species="bufo-bufo")
    assert schema.species == "bufo_bufo" and len(data) == 4


def test_the_site_search_space_is_validated_and_carried_to_the_split(tmp_path: Path) -> None:
    write_site(tmp_path / "site", FEATURES, {"lynx_lynx.csv": GOLD}, space=TEAM_YAML)
    _, schema = aggregated(tmp_path)
    assert schema.search_space == "lgbm_params.yml"
    carried = json.loads((tmp_path / "dataset" / "search_space.json").read_text())
    assert carried["initial_guess"]["n_estimators"] == 300

    (tmp_path / "site" / "lgbm_params.yml").write_text("tune: {metric: {choice: [auc]}}")
    with pytest.raises(DataValidationError, match=r"lgbm_params.yml: .*set by the recipe"):
        aggregated(tmp_path)


# -- split --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("sample") / "site"
    write_sample_data(site, seed=7)
    return site


@pytest.fixture(scope="module")
def lynx_dataset(sample_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lynx") / "dataset"
    aggregate(sample_site, out, SpeciesDistributionParams(species="Lynx lynx"))
    return out


def test_the_split_is_stratified_seeded_and_self_contained(
    lynx_dataset: Path, tmp_path: Path
) -> None:
    params = SpeciesDistributionParams(test_fraction=0.2, validation_fraction=0.1, seed=3)
    summary = split(lynx_dataset, tmp_path / "a", params)
    split(lynx_dataset, tmp_path / "b", params)

    sides = {
        n: pd.read_parquet(tmp_path / "a" / f"{n}.parquet") for n in ("train", "test", "validation")
    }
    everything = pd.read_parquet(lynx_dataset / "dataset.parquet")
    assert sum(len(s) for s in sides.values()) == len(everything)
    assert set().union(*(set(s["gbifid"]) for s in sides.values())) == set(everything["gbifid"])
    prevalence = everything["presence"].mean()
    for side in sides.values():
        assert side["presence"].mean() == pytest.approx(prevalence, abs=0.02)
    assert len(sides["test"]) == pytest.approx(0.2 * len(everything), abs=2)
    assert summary.details["validation"]["rows"] == len(sides["validation"])
    same = pd.read_parquet(tmp_path / "b" / "test.parquet")
    assert same["gbifid"].tolist() == sides["test"]["gbifid"].tolist(), "seeded"
    assert (tmp_path / "a" / "dataset.json").is_file()
    assert (tmp_path / "a" / "search_space.json").is_file()


def test_too_few_rows_of_a_class_for_the_split_is_a_data_error(tmp_path: Path) -> None:
    features = "gbifid,x\n" + "".join(f"{i},{i}\n" for i in range(1, 21))
    gold = "gbifid,presence\n1,PRESENT\n" + "".join(f"{i},ABSENT\n" for i in range(2, 21))
    write_site(tmp_path / "site", features, {"a.csv": gold})
    aggregate(tmp_path / "site", tmp_path / "dataset", SpeciesDistributionParams())
    with pytest.raises(DataValidationError, match=r"20 rows \(\{'ABSENT': 19, 'PRESENT': 1\}\)"):
        split(tmp_path / "dataset", tmp_path / "split", SpeciesDistributionParams())


# -- sample data --------------------------------------------------------------------------------


def test_the_sample_site_is_realistic_and_deterministic(sample_site: Path, tmp_path: Path) -> None:
    write_sample_data(tmp_path / "again", seed=7)
    for name in ("features.parquet", "gold/lynx_lynx.csv", "gold/bufo_bufo.parquet"):
        assert (sample_site / name).read_bytes() == (tmp_path / "again" / name).read_bytes()

    features = pd.read_parquet(sample_site / "features.parquet")
    assert features["gbifid"].str.startswith("00").all(), "ids as text with leading zeros"
    assert features["gbifid"].duplicated().sum() > 0
    assert features["ndvi"].isna().mean() > 0.01
    assert features["elevation_m"].dtype == "int64"
    assert pd.api.types.is_string_dtype(features["landcover"])
    gold = pd.read_csv(sample_site / "gold" / "lynx_lynx.csv", dtype=str)
    assert gold["gbifid"].str.len().eq(10).all()
    assert gold["presence"].isna().any()
    assert gold["gbifid"].duplicated().any()

    site = generate(seed=7)
    for species in SPECIES:
        presence = site.presence[species.name]
        assert presence.mean() == pytest.approx(species.prevalence, abs=0.05)
        # Spatially correlated: a presence's nearest neighbour is more often a presence.
        of_presences, of_absences = _nearest_is_present(site.features, presence)
        assert of_presences > of_absences + 0.1, species.name


def _nearest_is_present(features: pd.DataFrame, presence: np.ndarray) -> tuple[float, float]:
    """How often the nearest other point is a presence: for presences, for absences."""
    points = features[["decimallatitude", "decimallongitude"]].to_numpy() * [111.0, 70.0]
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest_present = presence[distances.argmin(axis=1)]
    return float(nearest_present[presence].mean()), float(nearest_present[~presence].mean())


# -- the model --------------------------------------------------------------------------------


def test_feature_frame_types_raw_rows_as_they_were_trained() -> None:
    training = pd.DataFrame(
        {"elevation": [10, 20, 30], "landcover": [10, 20, 10], "soil": ["clay", "sand", None]}
    )
    frame = FeatureFrame(["elevation", "landcover", "soil"], ["landcover", "soil"]).fit(training)
    batch = pd.DataFrame(
        {
            "soil": ["sand", "peat", None],
            "landcover": [20.0, np.nan, 10.0],
            "elevation": ["15", None, 40],
            "unused": [1, 2, 3],
        }
    )
    typed = frame.transform(batch)

    assert list(typed.columns) == ["elevation", "landcover", "soil"]
    assert typed["elevation"].tolist()[0] == 15.0 and np.isnan(typed["elevation"][1])
    assert list(typed["landcover"].cat.categories) == ["10", "20"]
    assert typed["landcover"].tolist()[0] == "20" and typed["landcover"].tolist()[2] == "10"
    assert pd.isna(typed["soil"][1]), "an unseen category is missing"
    with pytest.raises(ValueError, match=r"missing feature column\(s\) \['soil'\]"):
        frame.transform(batch.drop(columns="soil"))
    with pytest.raises(ValueError, match="'elevation' is numeric, got 'high'"):
        frame.transform(batch.assign(elevation=["high", 1, 2]))


# -- training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lynx_split(lynx_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lynx-split") / "split"
    split(lynx_dataset, out, SpeciesDistributionParams())
    return out


def test_train_tunes_scores_and_refits_a_model_for_raw_rows(
    lynx_split: Path, sample_site: Path, tmp_path: Path
) -> None:
    params = parsed(**{**QUICK, "max_evals": 4})
    result = train(lynx_split, tmp_path, params, ONE_CORE)

    assert [c.name for c in result.children] == [f"trial-00{i}" for i in range(4)]
    first = result.children[0]
    # The site's lgbm_params.yml: its initial guess is trial 0.
    assert first.tags["initial_guess"] == "true"
    assert dict(first.params) == {
        "learning_rate": 0.1,
        "num_leaves": 31,
        "min_child_samples": 20,
        "colsample_bytree": 0.9,
        "reg_lambda": 0.01,
    }
    assert set(first.metrics) >= {"cv_roc_auc", "fold_0_roc_auc", "fold_1_roc_auc", "duration_s"}
    assert first.metrics["cv_roc_auc"] == pytest.approx(
        (first.metrics["fold_0_roc_auc"] + first.metrics["fold_1_roc_auc"]) / 2
    )
    assert sum(c.tags["best"] == "true" for c in result.children) == 1

    best = json.loads((tmp_path / "best_parameters.json").read_text())
    winner = next(c for c in result.children if c.tags["best"] == "true")
    assert best["cv_roc_auc"] == pytest.approx(winner.metrics["cv_roc_auc"])
    assert best["parameters"]["subsample_freq"] == 1, "fixed params belong to the best ones"
    assert best["search_space"]["source"] == "site file"
    metrics_file = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics_file["test"]) >= {"roc_auc", "accuracy", "ABSENT", "PRESENT", "macro avg"}
    assert {p.name for p in result.artifacts} == {
        "best_parameters.json",
        "metrics.json",
        "confusion_matrix.png",
        "classification_report.png",
    }
    for png in ("confusion_matrix.png", "classification_report.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"

    assert result.flavor == "sklearn"
    assert result.log_model_options["pyfunc_predict_fn"] == "predict_proba"
    assert result.metrics["roc_auc"] > 0.7
    assert result.metrics["support_present"] + result.metrics["support_absent"] == len(
        pd.read_parquet(lynx_split / "test.parquet")
    )
    assert result.params["species"] == "lynx_lynx"

    raw = pd.read_parquet(sample_site / "features.parquet").head(50)
    probabilities = result.model.predict_proba(raw)
    assert probabilities.shape == (50, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert 0.0 < probabilities[:, 1].mean() < 0.5


def test_a_cancelled_run_stops_tuning_at_a_checkpoint(lynx_split: Path, tmp_path: Path) -> None:
    data = pd.read_parquet(lynx_split / "train.parquet")
    columns = ["elevation_m", "ndvi", "human_footprint"]
    features = FeatureFrame(columns).fit(data[columns]).transform(data[columns])
    checks = 0

    def cancelled_after_a_few_checks() -> None:
        nonlocal checks
        checks += 1
        if checks > 3:
            raise StageCancelledError()

    for workers in (1, 2):
        checks = 0
        with pytest.raises(StageCancelledError):
            tune(
                features,
                data["presence"].to_numpy(),
                parse_search_space({"tune": ["learning_rate"]}, source="test"),
                max_evals=1000,
                n_folds=2,
                early_stopping_rounds=5,
                seed=0,
                workers=workers,
                check_cancelled=cancelled_after_a_few_checks,
            )

    context = RecipeContext(cancelled=threading.Event(), max_workers=1)
    context.cancelled.set()
    with pytest.raises(StageCancelledError):
        train(lynx_split, tmp_path, parsed(**QUICK), context)


def test_no_progress_stops_the_search_and_refused_values_fail_trials(
    lynx_split: Path, tmp_path: Path
) -> None:
    params = parsed(**{**QUICK, "max_evals": 50}, no_progress_trials=2)
    result = train(lynx_split, tmp_path, params, ONE_CORE)
    assert result.params["stopped_early"] is True
    assert 3 <= len(result.children) < 50

    refused = {"tune": {"min_child_samples": {"int": [-5, -1]}}}
    with pytest.raises(TuningError, match=r"all 3 trial\(s\) failed.*min_data_in_leaf"):
        train(lynx_split, tmp_path, parsed(**QUICK, search_space=refused), ONE_CORE)


def test_more_folds_than_presences_is_a_data_error(tmp_path: Path) -> None:
    features = "gbifid,x\n" + "".join(f"{i},{i % 7}\n" for i in range(1, 41))
    gold = "gbifid,presence\n" + "".join(
        f"{i},{'PRESENT' if i % 10 == 0 else 'ABSENT'}\n" for i in range(1, 41)
    )
    write_site(tmp_path / "site", features, {"a.csv": gold})
    params = SpeciesDistributionParams(n_folds=5)
    aggregate(tmp_path / "site", tmp_path / "dataset", params)
    split(tmp_path / "dataset", tmp_path / "split", params)
    with pytest.raises(
        DataValidationError, match="hold 3 of their rarest class; a stratified 5-fold"
    ):
        train(tmp_path / "split", tmp_path / "out", params, ONE_CORE)
