"""A synthetic site for demos, tests and benchmarks: GBIF-like occurrences, three species.

Occurrences cluster the way GBIF records do (around towns and nature reserves, thinly
elsewhere) over about 100 x 110 km. The environment is built from smooth random fields, so
neighbouring points look alike: elevation, bioclimatic variables (temperature falls with
height), NDVI, distance to water, canopy height, a human-footprint index, a land-cover class
and a soil texture (text columns). Each species' presence follows its niche plus a spatial
field of its own (the unobserved: dispersal, history), so presences are spatially clustered
too, and is rare to common: about 10 % (Lynx lynx), 18 % (Cygnus buccinator) and 30 % (Bufo
bufo) of its labelled points.

What real exports hold, and the aggregation must cope with:

- ``gbifid`` as text with leading zeros, padded differently in the two tables;
- missing values in some environmental columns (NDVI, canopy height, soil texture);
- features rows repeated (a few exactly, a few with a changed value);
- gold rows repeated, a few ids labelled both PRESENT and ABSENT, a few labels missing, some
  in lower case or with spaces, and ids of points that are not in this site's features;
- not every occurrence labelled for every species.

Layout (see ``tables.py``)::

    features.parquet
    gold/bufo_bufo.parquet
    gold/cygnus_buccinator.csv
    gold/lynx_lynx.csv
    lgbm_params.yml

Deterministic for a seed. Command line::

    python -m recipes.species_distribution OUT_DIR [--seed N] [--rows N] [--features N]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 2400
# Sample columns besides gbifid and the coordinates; --features adds bioclimatic variables.
BASE_FEATURES = (
    "elevation_m",
    "slope_deg",
    "bio1_mean_temp_c",
    "bio4_temp_seasonality",
    "bio12_precip_mm",
    "bio15_precip_seasonality",
    "ndvi",
    "distance_to_water_m",
    "canopy_height_m",
    "human_footprint",
    "landcover",
    "soil_texture",
)
LANDCOVER = ("water", "wetland", "tree_cover", "grassland", "cropland", "built_up")
SOIL_TEXTURE = ("sand", "loam", "clay", "peat")
LAT_RANGE = (50.8, 51.8)
LON_RANGE = (5.0, 6.6)

LGBM_PARAMS_YAML = """\
# The tuning search space (the team's lgbm_params.yml): an initial guess, evaluated first, and
# the LightGBM parameters to tune with their ranges. See recipes/species_distribution/
# search_space.py for the format.
initial_guess:
  learning_rate: 0.1
  n_estimators: 400
  num_leaves: 31
  min_child_samples: 20
  subsample: 0.9
  subsample_freq: 1
  colsample_bytree: 0.9
  reg_lambda: 0.01
tune:
  learning_rate: {loguniform: [0.03, 0.3]}
  num_leaves: {logint: [8, 64]}
  min_child_samples: {logint: [5, 60]}
  colsample_bytree: {uniform: [0.5, 1.0]}
  reg_lambda: {loguniform: [0.001, 10.0]}
"""


@dataclass(frozen=True)
class Species:
    name: str
    prevalence: float
    niche: Callable[[pd.DataFrame], np.ndarray]  # environment -> logit, before the intercept
    gold_format: str


def _swan(env: pd.DataFrame) -> np.ndarray:
    wet = env["landcover"].isin(["water", "wetland"]).to_numpy()
    return (
        2.2 * wet
        - 1.1 * np.log1p(env["distance_to_water_m"].to_numpy() / 100.0)
        - 0.01 * env["elevation_m"].to_numpy()
        + 1.5 * env["ndvi"].fillna(0.5).to_numpy()
    )


def _lynx(env: pd.DataFrame) -> np.ndarray:
    forest = (env["landcover"] == "tree_cover").to_numpy()
    return (
        2.0 * forest
        + 0.08 * env["canopy_height_m"].fillna(0.0).to_numpy()
        - 0.09 * env["human_footprint"].to_numpy()
        + 0.008 * env["elevation_m"].to_numpy()
    )


def _toad(env: pd.DataFrame) -> np.ndarray:
    habitat = env["landcover"].isin(["tree_cover", "grassland", "wetland"]).to_numpy()
    temperature = env["bio1_mean_temp_c"].to_numpy()
    return (
        1.0 * habitat
        - 0.6 * np.log1p(env["distance_to_water_m"].to_numpy() / 200.0)
        - 0.35 * (temperature - 10.0) ** 2
        - 0.8 * (env["landcover"] == "built_up").to_numpy()
    )


SPECIES = (
    Species("Bufo bufo", 0.30, _toad, "parquet"),
    Species("Cygnus buccinator", 0.18, _swan, "csv"),
    Species("Lynx lynx", 0.10, _lynx, "csv"),
)


def gold_file_name(species: str, suffix: str) -> str:
    return species.lower().replace(" ", "_") + "." + suffix


@dataclass(frozen=True)
class Site:
    features: pd.DataFrame  # gbifid (text) + coordinates + environment, clean
    presence: dict[str, np.ndarray]  # per species: True/False for every features row


class _Fields:
    """Smooth random fields over the site (random Fourier features), unit variance."""

    def __init__(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> None:
        self._rng, self._x, self._y = rng, x, y

    def __call__(self, length_km: float, waves: int = 40) -> np.ndarray:
        frequencies = self._rng.normal(scale=1.0 / length_km, size=(waves, 2))
        phases = self._rng.uniform(0, 2 * np.pi, size=waves)
        field = np.cos(
            np.outer(self._x, frequencies[:, 0]) + np.outer(self._y, frequencies[:, 1]) + phases
        )
        values = field.sum(axis=1)
        return (values - values.mean()) / values.std()


def generate(seed: int = 0, rows: int = ROWS, n_features: int = len(BASE_FEATURES)) -> Site:
    """A clean site: ``rows`` occurrences with ``n_features`` environmental columns."""
    if n_features < len(BASE_FEATURES):
        raise ValueError(f"n_features must be at least {len(BASE_FEATURES)}, got {n_features}")
    rng = np.random.default_rng(seed)
    lat, lon = _occurrence_points(rng, rows)
    x = (lon - LON_RANGE[0]) * 70.0  # km, roughly, at these latitudes
    y = (lat - LAT_RANGE[0]) * 111.0
    field = _Fields(rng, x, y)

    elevation = 20 + 280 / (1 + np.exp(-1.3 * field(25.0))) + rng.normal(0, 8, rows)
    elevation = np.clip(elevation, 0, None).round().astype("int64")
    moisture, urban, woods = field(8.0), field(12.0), field(10.0)
    landcover = np.select(
        [
            moisture > 1.6,
            moisture > 1.0,
            urban > 1.2,
            woods > 0.5,
            woods > -0.4,
        ],
        ["water", "wetland", "built_up", "tree_cover", "grassland"],
        default="cropland",
    )
    distance_to_water = (
        np.where(
            np.isin(landcover, ["water", "wetland"]),
            rng.uniform(0, 60, rows),
            60 + 2500 * np.exp(-1.2 * moisture) * rng.lognormal(0, 0.3, rows),
        )
        .round()
        .astype("int64")
    )
    forest = landcover == "tree_cover"
    canopy = np.where(forest, rng.normal(22, 5, rows), rng.gamma(1.2, 1.2, rows)).clip(0)
    footprint = (12 + 9 * urban + 25 * (landcover == "built_up") + rng.normal(0, 3, rows)).clip(0)
    temperature = 11.8 - 0.0065 * elevation - 0.4 * (lat - 51.3) + 0.25 * field(30.0)
    ndvi_base = {"water": 0.05, "wetland": 0.55, "tree_cover": 0.8, "grassland": 0.65}
    ndvi = (
        pd.Series(landcover).map(ndvi_base).fillna(0.45).to_numpy()
        + rng.normal(0, 0.06, rows)
        - 0.004 * footprint
    ).clip(-0.1, 1.0)
    soil = np.array(SOIL_TEXTURE, dtype=object)[
        np.digitize(field(20.0) + 0.6 * moisture, [-0.8, 0.3, 1.1])
    ]

    env = pd.DataFrame(
        {
            "elevation_m": elevation,
            "slope_deg": (np.abs(field(3.0)) * 6 + elevation / 60).round(2),
            "bio1_mean_temp_c": temperature.round(2),
            "bio4_temp_seasonality": (560 + 35 * field(40.0) + rng.normal(0, 4, rows)).round(1),
            "bio12_precip_mm": (760 + 110 * field(35.0) + 0.45 * elevation).round().astype(int),
            "bio15_precip_seasonality": (18 + 4 * field(40.0)).round(2),
            "ndvi": ndvi.round(3),
            "distance_to_water_m": distance_to_water,
            "canopy_height_m": canopy.round(1),
            "human_footprint": footprint.round(2),
            "landcover": landcover,
            "soil_texture": soil,
        }
    )
    for number in range(n_features - len(BASE_FEATURES)):
        # More bioclimatic variables: mixtures of temperature, precipitation and local terrain.
        mix = rng.normal(size=3)
        env[f"bio_extra_{number + 1:02d}"] = (
            mix[0] * (temperature - temperature.mean())
            + mix[1] * field(30.0)
            + mix[2] * field(6.0)
            + rng.normal(0, 0.2, rows)
        ).round(3)

    presence = {}
    for species in SPECIES:
        logit = species.niche(env) + 0.9 * field(6.0)
        presence[species.name] = rng.random(rows) < _sigmoid(
            logit + _intercept(logit, species.prevalence)
        )
    ids = 1_000_000_000 + rng.choice(3_500_000_000, size=rows, replace=False)
    features = pd.DataFrame(
        {
            # Text with leading zeros: 12 digits here, 10 in the gold tables.
            "gbifid": [f"{i:012d}" for i in ids],
            "decimallatitude": lat.round(5),
            "decimallongitude": lon.round(5),
        }
    )
    return Site(pd.concat([features, env], axis=1), presence)


def write_sample_data(
    out_dir: Path, seed: int = 0, *, rows: int = ROWS, n_features: int = len(BASE_FEATURES)
) -> None:
    """Writes the site (layout in the module docstring) into ``out_dir``."""
    site = generate(seed, rows, n_features)
    rng = np.random.default_rng(seed + 1)
    out = Path(out_dir)
    (out / "gold").mkdir(parents=True, exist_ok=True)
    _messy_features(site.features, rng).to_parquet(out / "features.parquet", index=False)
    for species in SPECIES:
        gold = _messy_gold(site.features["gbifid"], site.presence[species.name], rng)
        path = out / "gold" / gold_file_name(species.name, species.gold_format)
        if species.gold_format == "parquet":
            gold.to_parquet(path, index=False)
        else:
            gold.to_csv(path, index=False)
    (out / "lgbm_params.yml").write_text(LGBM_PARAMS_YAML)


def _messy_features(features: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frame = features.copy()
    rows = len(frame)
    for column, share in (("ndvi", 0.03), ("canopy_height_m", 0.05), ("soil_texture", 0.02)):
        frame.loc[rng.random(rows) < share, column] = None
    exact = frame.sample(n=max(1, rows // 100), random_state=int(rng.integers(2**31)))
    changed = frame.sample(n=max(1, rows // 400), random_state=int(rng.integers(2**31))).copy()
    changed["ndvi"] = changed["ndvi"] + 0.01
    frame = pd.concat([frame, exact, changed], ignore_index=True)
    return frame.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)


def _messy_gold(ids: pd.Series, presence: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    rows = len(ids)
    labelled = rng.random(rows) < 0.8
    numbers = ids[labelled].astype("int64").to_numpy()
    labels = np.where(presence[labelled], "PRESENT", "ABSENT").astype(object)
    # Points of other sites (ids above those of this one's features).
    elsewhere = rng.integers(5_000_000_000, 6_000_000_000, size=max(1, rows // 50))
    numbers = np.concatenate([numbers, elsewhere])
    labels = np.concatenate([labels, rng.choice(["PRESENT", "ABSENT"], size=len(elsewhere))])
    gold = pd.DataFrame({"gbifid": [f"{i:010d}" for i in numbers], "presence": labels})
    count = len(gold)
    styled = rng.random(count) < 0.02
    gold.loc[styled, "presence"] = [
        rng.choice([value.lower(), f" {value} ", value.title()])
        for value in gold.loc[styled, "presence"]
    ]
    gold.loc[rng.random(count) < 0.01, "presence"] = None
    repeated = gold.sample(n=max(1, count // 100), random_state=int(rng.integers(2**31)))
    flipped = gold.dropna().sample(n=max(1, count // 500), random_state=int(rng.integers(2**31)))
    flipped = flipped.assign(
        presence=np.where(
            flipped["presence"].str.strip().str.upper() == "PRESENT", "ABSENT", "PRESENT"
        )
    )
    gold = pd.concat([gold, repeated, flipped], ignore_index=True)
    return gold.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)


def _occurrence_points(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """GBIF-like sampling: most records around a dozen hot spots, the rest anywhere."""
    centres = np.column_stack([rng.uniform(*LAT_RANGE, size=12), rng.uniform(*LON_RANGE, size=12)])
    clustered = rng.random(rows) < 0.7
    which = rng.integers(0, len(centres), size=rows)
    lat = np.where(
        clustered, centres[which, 0] + rng.normal(0, 0.05, rows), rng.uniform(*LAT_RANGE, rows)
    )
    lon = np.where(
        clustered, centres[which, 1] + rng.normal(0, 0.08, rows), rng.uniform(*LON_RANGE, rows)
    )
    return lat.clip(*LAT_RANGE), lon.clip(*LON_RANGE)


def _intercept(logit: np.ndarray, prevalence: float) -> float:
    """The intercept that makes the mean presence probability ``prevalence`` (bisection)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = (low + high) / 2
        if _sigmoid(logit + middle).mean() < prevalence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="the site folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=ROWS, help="occurrences (features rows)")
    parser.add_argument(
        "--features",
        type=int,
        default=len(BASE_FEATURES),
        help=f"environmental columns (at least {len(BASE_FEATURES)})",
    )
    args = parser.parse_args(argv)
    write_sample_data(args.out_dir, args.seed, rows=args.rows, n_features=args.features)
    print(f"wrote a sample species distribution site to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
