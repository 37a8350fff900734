"""The tuning search space: an initial guess plus the LightGBM parameters to tune, and how.

The format is the biodiversity team's ``lgbm_params.yml``, as YAML or JSON, in the site
folder or inline in the run's params::

    initial_guess:            # every LightGBM parameter's value; the first trial evaluates it
      learning_rate: 0.1
      n_estimators: 1000      # the most boosting rounds; early stopping picks fewer
      num_leaves: 31
      subsample_freq: 1
    tune:                     # the parameters to tune, each {distribution: [arguments]}
      learning_rate: {loguniform: [0.02, 0.3]}
      num_leaves: {logint: [8, 128]}
      colsample_bytree: {uniform: [0.5, 1.0]}
      boosting_type: {choice: [gbdt, dart]}

Distributions: ``uniform: [low, high]``, ``loguniform: [low, high]`` (low > 0; uniform in
log space), ``int: [low, high]`` (integers, both ends included), ``logint: [low, high]``,
``choice: [value, ...]``. ``tune`` may also be a plain list of names, which then get the
ranges in ``DEFAULT_RANGES``. A tuned parameter missing from the initial guess starts at
LightGBM's default when that lies in its range, else at the middle of the range.

Parameter names are those of LightGBM's scikit-learn API (``LGBMClassifier``) or LightGBM's
own names, which it accepts too. The recipe sets some itself (objective, metric, threads,
seed, early stopping): naming one is an error. The number of boosting rounds is
``n_estimators`` (its aliases are refused, to avoid two spellings fighting).

Parsing needs only pydantic and PyYAML; hyperopt is imported when the space is turned into
hyperopt expressions (``to_hyperopt``), so that reading params stays cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

Scalar = bool | int | float | str
DistributionKind = Literal["uniform", "loguniform", "int", "logint", "choice"]

# Boosting rounds when the space does not say: an upper bound, early stopping picks fewer.
DEFAULT_N_ESTIMATORS = 1000

# Set by the recipe: the objective and metric are what this recipe is, threads follow the
# stage's cores, the seed follows the run's ``seed`` and early stopping its own param.
RESERVED = {
    "objective": "the recipe trains a binary classifier",
    "application": "the recipe trains a binary classifier",
    "app": "the recipe trains a binary classifier",
    "metric": "the recipe tunes for ROC-AUC",
    "n_jobs": "threads follow the cores the stage may use",
    "num_threads": "threads follow the cores the stage may use",
    "nthread": "threads follow the cores the stage may use",
    "nthreads": "threads follow the cores the stage may use",
    "num_thread": "threads follow the cores the stage may use",
    "random_state": "use the run's seed param",
    "seed": "use the run's seed param",
    "random_seed": "use the run's seed param",
    "verbose": "the recipe silences LightGBM",
    "verbosity": "the recipe silences LightGBM",
    "early_stopping_round": "use the early_stopping_rounds param",
    "early_stopping_rounds": "use the early_stopping_rounds param",
    "early_stopping": "use the early_stopping_rounds param",
    "n_iter_no_change": "use the early_stopping_rounds param",
}
ROUNDS_ALIASES = (
    "num_iterations",
    "num_iteration",
    "n_iter",
    "num_tree",
    "num_trees",
    "num_round",
    "num_rounds",
    "nrounds",
    "num_boost_round",
    "max_iter",
)

# LightGBM's defaults (scikit-learn API names), where a tuned parameter starts without a guess.
LIGHTGBM_DEFAULTS: dict[str, Scalar] = {
    "learning_rate": 0.1,
    "num_leaves": 31,
    "max_depth": -1,
    "min_child_samples": 20,
    "min_child_weight": 1e-3,
    "min_split_gain": 0.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_alpha": 0.0,
    "reg_lambda": 0.0,
    "max_bin": 255,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (_is_number(a) and _is_number(b) and a == b)


class Distribution(BaseModel):
    """One tuned parameter's range, written ``{kind: [arguments]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DistributionKind
    args: tuple[Scalar, ...]

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and set(value) != {"kind", "args"}:
            if len(value) != 1:
                raise ValueError(
                    "a range is one {distribution: [arguments]} pair, e.g. "
                    "{loguniform: [0.01, 0.3]}"
                )
            ((kind, args),) = value.items()
            if not isinstance(args, list | tuple):
                raise ValueError(f"the arguments of {kind!r} must be a list, got {args!r}")
            return {"kind": kind, "args": tuple(args)}
        return value

    @model_validator(mode="after")
    def _valid_arguments(self) -> Distribution:
        if self.kind == "choice":
            if not self.args:
                raise ValueError("choice needs at least one value")
            if len(set(map(repr, self.args))) != len(self.args):
                raise ValueError(f"choice values repeat: {list(self.args)}")
            return self
        if len(self.args) != 2 or not all(_is_number(a) for a in self.args):
            raise ValueError(f"{self.kind} takes [low, high] numbers, got {list(self.args)}")
        low, high = (float(a) for a in self.args)
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"{self.kind} needs finite low < high, got {list(self.args)}")
        if self.kind in ("loguniform", "logint") and low <= 0:
            raise ValueError(f"{self.kind} needs low > 0, got {list(self.args)}")
        if self.kind in ("int", "logint") and not all(float(a).is_integer() for a in self.args):
            raise ValueError(f"{self.kind} needs whole-number bounds, got {list(self.args)}")
        return self

    @model_serializer
    def _as_mapping(self) -> dict[str, list[Scalar]]:
        return {self.kind: list(self.args)}

    def contains(self, value: Scalar) -> bool:
        if self.kind == "choice":
            return any(_same(value, option) for option in self.args)
        if not _is_number(value):
            return False
        low, high = (float(a) for a in self.args)
        inside = low <= float(value) <= high
        return inside and (self.kind not in ("int", "logint") or float(value).is_integer())

    def start(self, name: str) -> Scalar:
        """Where tuning starts without a guess: LightGBM's default if inside, else the middle."""
        default = LIGHTGBM_DEFAULTS.get(name)
        if default is not None and self.contains(default):
            return default
        if self.kind == "choice":
            return self.args[0]
        low, high = (float(a) for a in self.args)
        middle = (
            math.sqrt(low * high) if self.kind in ("loguniform", "logint") else (low + high) / 2
        )
        return round(middle) if self.kind in ("int", "logint") else middle

    def to_hyperopt(self, name: str) -> Any:
        from hyperopt import hp
        from hyperopt.pyll import scope

        if self.kind == "choice":
            return hp.choice(name, list(self.args))
        low, high = (float(a) for a in self.args)
        if self.kind == "uniform":
            return hp.uniform(name, low, high)
        if self.kind == "loguniform":
            return hp.loguniform(name, math.log(low), math.log(high))
        if self.kind == "int":
            return hp.uniformint(name, low, high)
        return scope.int(hp.qloguniform(name, math.log(low), math.log(high), 1))

    def to_hyperopt_value(self, value: Scalar) -> Any:
        """``value`` as hyperopt stores it in a trial: the index of a choice, else itself."""
        if self.kind == "choice":
            return next(i for i, option in enumerate(self.args) if _same(value, option))
        return float(value)


# The ranges a name listed in ``tune`` gets (``tune: [learning_rate, num_leaves]``).
DEFAULT_RANGES: dict[str, Distribution] = {
    name: Distribution.model_validate(spec)
    for name, spec in {
        "learning_rate": {"loguniform": [0.02, 0.3]},
        "num_leaves": {"logint": [8, 128]},
        "max_depth": {"int": [3, 12]},
        "min_child_samples": {"logint": [5, 100]},
        "min_child_weight": {"loguniform": [1e-3, 10.0]},
        "min_split_gain": {"uniform": [0.0, 1.0]},
        "subsample": {"uniform": [0.5, 1.0]},
        "colsample_bytree": {"uniform": [0.5, 1.0]},
        "reg_alpha": {"loguniform": [1e-3, 10.0]},
        "reg_lambda": {"loguniform": [1e-3, 10.0]},
        "max_bin": {"logint": [32, 255]},
        "scale_pos_weight": {"loguniform": [0.5, 20.0]},
    }.items()
}


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_guess: dict[str, Scalar] = {}
    tune: dict[str, Distribution] = {}

    @model_validator(mode="before")
    @classmethod
    def _names_get_default_ranges(cls, value: Any) -> Any:
        if not isinstance(value, Mapping) or not isinstance(value.get("tune"), list | tuple):
            return value
        names = value["tune"]
        unknown = [n for n in names if n not in DEFAULT_RANGES]
        if unknown:
            raise ValueError(
                f"no default range for {unknown}; give one, e.g. "
                f"tune: {{{unknown[0]}: {{uniform: [low, high]}}}} (defaults exist for "
                f"{sorted(DEFAULT_RANGES)})"
            )
        return {**value, "tune": {name: DEFAULT_RANGES[name] for name in names}}

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        for name in [*self.initial_guess, *self.tune]:
            if name in RESERVED:
                raise ValueError(f"{name!r} is set by the recipe: {RESERVED[name]}")
            if name in ROUNDS_ALIASES:
                raise ValueError(f"{name!r}: give the number of boosting rounds as n_estimators")
        if not self.tune:
            raise ValueError("tune names no parameter; list at least one to tune")
        for name, distribution in self.tune.items():
            guess = self.initial_guess.get(name)
            if guess is not None and not distribution.contains(guess):
                raise ValueError(
                    f"initial_guess {name}={guess!r} lies outside its range "
                    f"{distribution.model_dump()}"
                )
        rounds = self.initial_guess.get("n_estimators", DEFAULT_N_ESTIMATORS)
        if "n_estimators" not in self.tune and (
            not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1
        ):
            raise ValueError(f"n_estimators must be a positive integer, got {rounds!r}")
        return self

    @property
    def fixed(self) -> dict[str, Scalar]:
        """The parameters every trial shares: the initial guess of those not tuned."""
        fixed = {k: v for k, v in self.initial_guess.items() if k not in self.tune}
        if "n_estimators" not in self.tune:
            fixed.setdefault("n_estimators", DEFAULT_N_ESTIMATORS)
        return fixed

    def initial_point(self) -> dict[str, Scalar]:
        """The first trial: each tuned parameter's guess (or where it starts without one)."""
        return {
            name: self.initial_guess.get(name, distribution.start(name))
            for name, distribution in self.tune.items()
        }

    def to_hyperopt(self) -> dict[str, Any]:
        return {name: d.to_hyperopt(name) for name, d in self.tune.items()}


# The built-in space, used when a run gives none and the site has no lgbm_params.yml.
DEFAULT_SEARCH_SPACE = SearchSpace.model_validate(
    {
        "initial_guess": {
            "learning_rate": 0.1,
            "n_estimators": DEFAULT_N_ESTIMATORS,
            "num_leaves": 31,
            "min_child_samples": 20,
            "subsample": 1.0,
            "subsample_freq": 1,
            "colsample_bytree": 1.0,
            "reg_lambda": 0.001,
        },
        "tune": [
            "learning_rate",
            "num_leaves",
            "min_child_samples",
            "subsample",
            "colsample_bytree",
            "reg_lambda",
        ],
    }
)


class SearchSpaceError(ValueError):
    """The search space text or object is not valid; the message says where and why."""


def parse_search_space(value: Any, *, source: str) -> SearchSpace:
    """A ``SearchSpace`` from an object or YAML/JSON text; ``SearchSpaceError`` names
    ``source`` (a file name or ``search_space``) and each problem."""
    if isinstance(value, str | bytes):
        import yaml

        try:
            # YAML 1.1 is a superset of JSON for these documents.
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SearchSpaceError(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(value, Mapping):
        raise SearchSpaceError(
            f"{source}: expected a mapping with initial_guess and tune, got {type(value).__name__}"
        )
    try:
        return SearchSpace.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'space'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SearchSpaceError(f"{source}: {problems}") from exc


def to_json(space: SearchSpace) -> str:
    return json.dumps(space.model_dump(mode="json"), indent=2) + "\n"
