"""The model zoo: 15 scikit-learn classifiers on TF-IDF features, and their tuning spaces.

Ported from the team's ``Model_choice``: naive Bayes (multinomial, complement, Bernoulli),
ridge, logistic regression, linear SVC, SGD, passive-aggressive, perceptron, nearest
centroid, k-NN, random forest, extra trees, gradient boosting and a decision tree. Each member
is ``Pipeline(tfidf, classifier)`` over cleaned text. Nearest centroid and k-NN take part for
comparison only (``COMPARISON_ONLY``: no exact ONNX form of a sensible size), so the model
tuned and exported is the best of the other thirteen.

Passive-aggressive is ``SGDClassifier(loss="hinge", learning_rate="pa1", penalty=None)``: the
form scikit-learn 1.8 deprecated ``PassiveAggressiveClassifier`` in favour of (``eta0`` is the
aggressiveness ``C``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from scipy.stats import loguniform, randint, uniform
from sklearn.base import ClassifierMixin
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Perceptron, RidgeClassifier, SGDClassifier
from sklearn.naive_bayes import BernoulliNB, ComplementNB, MultinomialNB
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from recipes.text_classification.cleaning import WORD_PATTERN
from recipes.text_classification.params import COMPARISON_ONLY, MODEL_NAMES, ModelName

ClassifierFactory = Callable[[int], ClassifierMixin]

CLASSIFIERS: dict[ModelName, ClassifierFactory] = {
    "multinomial_nb": lambda seed: MultinomialNB(),
    "complement_nb": lambda seed: ComplementNB(),
    "bernoulli_nb": lambda seed: BernoulliNB(),
    "ridge": lambda seed: RidgeClassifier(random_state=seed),
    "logistic_regression": lambda seed: LogisticRegression(max_iter=1000, random_state=seed),
    "linear_svc": lambda seed: LinearSVC(random_state=seed),
    "sgd": lambda seed: SGDClassifier(loss="modified_huber", random_state=seed),
    "passive_aggressive": lambda seed: SGDClassifier(
        loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0, random_state=seed
    ),
    "perceptron": lambda seed: Perceptron(random_state=seed),
    "nearest_centroid": lambda seed: NearestCentroid(),
    "knn": lambda seed: KNeighborsClassifier(n_neighbors=5, metric="cosine"),
    "random_forest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed),
    "extra_trees": lambda seed: ExtraTreesClassifier(n_estimators=100, random_state=seed),
    # Sparse TF-IDF with thousands of columns: sqrt features keeps each tree affordable.
    "gradient_boosting": lambda seed: GradientBoostingClassifier(
        n_estimators=100, max_features="sqrt", random_state=seed
    ),
    "decision_tree": lambda seed: DecisionTreeClassifier(random_state=seed),
}
assert tuple(CLASSIFIERS) == MODEL_NAMES

_TREES: dict[str, Any] = {
    "clf__n_estimators": randint(50, 301),
    "clf__max_depth": [None, 20, 50, 100],
    "clf__min_samples_leaf": randint(1, 5),
    "clf__max_features": ["sqrt", "log2"],
}
_NAIVE_BAYES: dict[str, Any] = {"clf__alpha": loguniform(1e-3, 10.0)}
# Classifier hyperparameters per model; every model's trials also vary the vectoriser.
CLASSIFIER_SPACES: dict[str, dict[str, Any]] = {
    "multinomial_nb": _NAIVE_BAYES,
    "complement_nb": {**_NAIVE_BAYES, "clf__norm": [False, True]},
    "bernoulli_nb": _NAIVE_BAYES,
    "ridge": {"clf__alpha": loguniform(1e-2, 100.0)},
    "logistic_regression": {"clf__C": loguniform(1e-2, 100.0)},
    "linear_svc": {"clf__C": loguniform(1e-2, 100.0)},
    "sgd": {
        "clf__alpha": loguniform(1e-6, 1e-2),
        "clf__loss": ["hinge", "log_loss", "modified_huber"],
    },
    "passive_aggressive": {"clf__eta0": loguniform(1e-3, 10.0)},
    "perceptron": {
        "clf__alpha": loguniform(1e-6, 1e-2),
        "clf__penalty": [None, "l2", "elasticnet"],
    },
    "random_forest": _TREES,
    "extra_trees": _TREES,
    "gradient_boosting": {
        "clf__n_estimators": randint(50, 201),
        "clf__learning_rate": loguniform(0.03, 0.3),
        "clf__max_depth": randint(2, 6),
        "clf__subsample": uniform(0.6, 0.4),
    },
    "decision_tree": {
        "clf__max_depth": [None, 10, 30, 100],
        "clf__min_samples_leaf": randint(1, 10),
    },
}
assert set(CLASSIFIER_SPACES) == set(MODEL_NAMES) - COMPARISON_ONLY
VECTORISER_SPACE: dict[str, Any] = {
    "tfidf__ngram_range": [(1, 1), (1, 2)],
    "tfidf__min_df": [1, 2, 3],
    "tfidf__max_features": [5_000, 10_000, 20_000, 50_000],
    "tfidf__sublinear_tf": [True, False],
}


def vectoriser(max_features: int) -> TfidfVectorizer:
    """TF-IDF over cleaned text: its words are already lower-case and split by spaces."""
    return TfidfVectorizer(
        lowercase=False,
        token_pattern=WORD_PATTERN,
        ngram_range=(1, 2),
        sublinear_tf=True,
        max_features=max_features,
    )


def member(name: ModelName, *, seed: int, max_features: int) -> Pipeline:
    """A zoo member: ``Pipeline(tfidf, clf)`` over cleaned text, with default settings."""
    return Pipeline([("tfidf", vectoriser(max_features)), ("clf", CLASSIFIERS[name](seed))])


def search_space(name: ModelName) -> dict[str, Any]:
    return {**VECTORISER_SPACE, **CLASSIFIER_SPACES[name]}


def exportable(name: str) -> bool:
    return name not in COMPARISON_ONLY


def readable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Trial params as plain values (tuples as text, numpy numbers as Python numbers)."""
    readable: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, tuple):
            value = str(value)
        elif hasattr(value, "item"):
            value = value.item()
        readable[key] = value
    return readable
