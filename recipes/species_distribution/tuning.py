"""Hyperopt TPE over LightGBM, each trial scored by stratified k-fold ROC-AUC, in parallel.

The team's objective, kept: a trial fits one ``LGBMClassifier`` per fold of a shuffled,
stratified k-fold split of the training rows, stopping early once the fold's ROC-AUC has not
improved for ``early_stopping_rounds`` rounds, and scores the mean of the folds' ROC-AUC
(scikit-learn's ``roc_auc_score`` on the held-out fold at the best round). The search is
hyperopt's TPE (``tpe.suggest``), starting from the initial guess.

What changes is how trials run. ``hyperopt.fmin`` evaluates one trial at a time, and
LightGBM's own threads speed up one fit on a few thousand rows poorly (each round is short,
so threads spend much of it synchronising). Here the unit of work is one *fold fit*,
evaluated by a pool of worker processes, each LightGBM single-threaded (``max_workers``
processes x 1 thread: the stage's cores, not more). hyperopt is driven ask-and-tell: a new
trial is asked of TPE the moment the queue would otherwise leave a worker idle, and each
finished trial is told to TPE at once. TPE treats trials still running as bad outcomes
(hyperopt's rule for its asynchronous backends), so it does not suggest the same region
twice; with ``workers`` below ``n_folds`` at most about two trials are in flight, so each
suggestion knows nearly every result a sequential search would.

The pool is loky's ``ProcessPoolExecutor`` (joblib's, which scikit-learn already depends
on): its workers are fresh interpreters (fork + exec), so nothing of the train worker's
threads (bus receivers, lock renewal) is copied into them mid-operation, and unlike the
standard library's ``spawn`` and ``forkserver`` they do not re-import the caller's main
module, so a script calling ``train`` needs no ``if __name__ == "__main__"`` guard. Its
``shutdown(kill_workers=True)`` stops running fits on a cancel. Each worker imports LightGBM
once (about a second) and holds one copy of the training rows.

Cancellation: ``check_cancelled`` runs between fold results (and every poll); on a cancel the
workers are killed and ``StageCancelledError`` leaves at once.

With the order in which results arrive, the sequence of suggestions (not any one trial's
score) depends on timing: two runs with the same seed and more than one worker may try
different points. One worker is fully reproducible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recipes.species_distribution.search_space import Scalar, SearchSpace
from shared.errors import PermanentError

# How often a waiting tuner looks at the cancellation flag between results.
POLL_S = 0.2

log = logging.getLogger(__name__)


class TuningError(PermanentError):
    """No trial could be scored: the search space gives LightGBM values it refuses."""


@dataclass(frozen=True)
class FoldTask:
    trial: int
    fold: int
    params: Mapping[str, Scalar]


@dataclass(frozen=True)
class FoldResult:
    trial: int
    fold: int
    roc_auc: float
    best_iteration: int
    seconds: float
    error: str | None = None


@dataclass
class TrialResult:
    """One hyperopt trial: the tuned values and what each fold scored."""

    number: int
    params: dict[str, Scalar]
    n_folds: int
    folds: dict[int, FoldResult] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.folds) == self.n_folds

    @property
    def error(self) -> str | None:
        return next((r.error for _, r in sorted(self.folds.items()) if r.error), None)

    @property
    def fold_scores(self) -> list[float]:
        return [self.folds[k].roc_auc for k in sorted(self.folds)]

    @property
    def best_iterations(self) -> list[int]:
        return [self.folds[k].best_iteration for k in sorted(self.folds)]

    @property
    def score(self) -> float:
        """Mean fold ROC-AUC; NaN for a failed trial."""
        return math.nan if self.error else float(np.mean(self.fold_scores))

    @property
    def fit_seconds(self) -> float:
        """The trial's compute: its folds' fit times added up."""
        return float(sum(r.seconds for r in self.folds.values()))

    @property
    def rounds(self) -> int:
        """Boosting rounds for a model on all the folds' rows: the folds' mean best round."""
        return max(1, round(float(np.mean(self.best_iterations))))


@dataclass(frozen=True)
class TuningResult:
    trials: list[TrialResult]  # in the order they were suggested
    best: TrialResult
    workers: int
    threads_per_fit: int
    wall_s: float
    stopped_early: bool


@dataclass(frozen=True)
class FoldData:
    """What every fold fit needs; sent to each worker process once."""

    features: pd.DataFrame  # typed by FeatureFrame: float64 and categorical columns
    labels: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    fixed: Mapping[str, Scalar]
    early_stopping_rounds: int
    seed: int
    threads: int


def lightgbm_params(
    fixed: Mapping[str, Scalar], tuned: Mapping[str, Scalar], *, seed: int, threads: int
) -> dict[str, Any]:
    """``LGBMClassifier`` keyword arguments: the trial's values plus what the recipe sets."""
    return {
        **fixed,
        **tuned,
        "objective": "binary",
        "metric": "auc",
        "n_jobs": threads,
        "random_state": seed,
        "verbose": -1,
    }


def fit_fold(data: FoldData, task: FoldTask) -> FoldResult:
    """One fold of one trial; a value LightGBM refuses is a failed fold, not an exception."""
    import lightgbm
    from sklearn.metrics import roc_auc_score

    started = time.perf_counter()
    train_rows, valid_rows = data.folds[task.fold]
    x_valid, y_valid = data.features.iloc[valid_rows], data.labels[valid_rows]
    model = lightgbm.LGBMClassifier(
        **lightgbm_params(data.fixed, task.params, seed=data.seed, threads=data.threads)
    )
    try:
        model.fit(
            data.features.iloc[train_rows],
            data.labels[train_rows],
            eval_X=(x_valid,),
            eval_y=(y_valid,),
            callbacks=[lightgbm.early_stopping(data.early_stopping_rounds, verbose=False)],
        )
    except (lightgbm.basic.LightGBMError, ValueError, TypeError) as exc:
        return FoldResult(task.trial, task.fold, math.nan, 0, _elapsed(started), str(exc))
    probabilities = np.asarray(model.predict_proba(x_valid))[:, 1]
    return FoldResult(
        trial=task.trial,
        fold=task.fold,
        roc_auc=float(roc_auc_score(y_valid, probabilities)),
        best_iteration=int(model.best_iteration_ or model.n_estimators_),
        seconds=_elapsed(started),
    )


# The fold data of a pool worker process, set once by its initializer.
_WORKER_DATA: FoldData | None = None


def _init_worker(data: FoldData) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data


def _fit_fold_in_worker(task: FoldTask) -> FoldResult:
    assert _WORKER_DATA is not None, "pool worker used before its initializer ran"
    return fit_fold(_WORKER_DATA, task)


class _InlineExecutor(Executor):
    """One worker needs no pool: each fold is fitted here, on ``data``, as it is submitted
    (``submit(_fit_fold_in_worker, task)`` keeps the pool's call shape; the pool's entry point
    itself reads the data a worker process's initializer set)."""

    def __init__(self, data: FoldData, check_cancelled: Callable[[], None]) -> None:
        self._data = data
        self._check_cancelled = check_cancelled

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._check_cancelled()
        future: Future[Any] = Future()
        future.set_result(fit_fold(self._data, *args))
        return future


def stratified_folds(
    labels: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each fold of a shuffled, stratified k-fold split."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def tune(
    features: pd.DataFrame,
    labels: np.ndarray,
    space: SearchSpace,
    *,
    max_evals: int,
    n_folds: int,
    early_stopping_rounds: int,
    seed: int,
    workers: int,
    cores: int | None = None,
    no_progress_trials: int | None = None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> TuningResult:
    """Runs the search on ``workers`` processes (1: in this process); each LightGBM fit gets
    ``cores // workers`` threads (``cores`` defaults to ``workers``: one thread each)."""
    from hyperopt import JOB_STATE_DONE, JOB_STATE_RUNNING, STATUS_FAIL, STATUS_OK, Trials, tpe
    from hyperopt.base import Domain, spec_from_misc
    from hyperopt.fmin import generate_trial, space_eval

    started = time.perf_counter()
    workers = max(1, min(workers, max_evals * n_folds))
    threads = max(1, (cores or workers) // workers)
    data = FoldData(
        features=features,
        labels=np.asarray(labels),
        folds=stratified_folds(labels, n_folds, seed),
        fixed=dict(space.fixed),
        early_stopping_rounds=early_stopping_rounds,
        seed=seed,
        threads=threads,
    )
    hyperopt_space = space.to_hyperopt()
    domain = Domain(lambda _: 0.0, hyperopt_space)
    history = Trials()
    rng = np.random.default_rng(seed)
    docs: dict[int, dict[str, Any]] = {}
    running: dict[int, TrialResult] = {}
    finished: list[TrialResult] = []
    in_flight: dict[Future[FoldResult], int] = {}
    best_score, since_best, stopped_early = -math.inf, 0, False

    def ask(number: int) -> TrialResult:
        (tid,) = history.new_trial_ids(1)
        if number == 0:
            point = {
                name: space.tune[name].to_hyperopt_value(value)
                for name, value in space.initial_point().items()
            }
            doc = generate_trial(tid, point)
        else:
            seed_i = int(rng.integers(2**31 - 1))
            (doc,) = tpe.suggest([tid], domain, history, seed_i, verbose=False)
        history.insert_trial_docs([doc])
        doc["state"] = JOB_STATE_RUNNING
        history.refresh()
        docs[number] = doc
        values = space_eval(hyperopt_space, spec_from_misc(doc["misc"]))
        return TrialResult(number, {k: _plain(v) for k, v in values.items()}, n_folds)

    def tell(trial: TrialResult) -> None:
        doc = docs.pop(trial.number)
        doc["state"] = JOB_STATE_DONE
        doc["result"] = (
            {"status": STATUS_FAIL} if trial.error else {"status": STATUS_OK, "loss": -trial.score}
        )
        history.refresh()

    executor = _InlineExecutor(data, check_cancelled) if workers == 1 else _pool(workers, data)
    submitted_at: dict[int, float] = {}
    completed = False
    try:
        while True:
            check_cancelled()
            while not stopped_early and len(submitted_at) < max_evals and len(in_flight) < workers:
                trial = ask(len(submitted_at))
                running[trial.number] = trial
                submitted_at[trial.number] = time.perf_counter()
                for fold in range(n_folds):
                    task = FoldTask(trial.number, fold, trial.params)
                    in_flight[executor.submit(_fit_fold_in_worker, task)] = trial.number
            if not in_flight:
                break
            done, _ = wait(list(in_flight), timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                number = in_flight.pop(future)
                result = future.result()
                trial = running[number]
                trial.folds[result.fold] = result
                if not trial.complete:
                    continue
                del running[number]
                trial.wall_s = time.perf_counter() - submitted_at[number]
                tell(trial)
                finished.append(trial)
                if trial.error:
                    log.info("trial %d failed: %s", number, trial.error)
                    continue
                if trial.score > best_score:
                    best_score, since_best = trial.score, 0
                else:
                    since_best += 1
                    if no_progress_trials is not None and since_best >= no_progress_trials:
                        stopped_early = True
        completed = True
    finally:
        # A cancel or an error leaves at once, with the fits still running killed.
        if isinstance(executor, _InlineExecutor):
            executor.shutdown()
        else:
            executor.shutdown(wait=completed, kill_workers=not completed)

    finished.sort(key=lambda t: t.number)
    scored = [t for t in finished if not t.error]
    if not scored:
        raise TuningError(
            f"all {len(finished)} trial(s) failed; LightGBM refused the search space: "
            f"{finished[0].error if finished else 'no trial ran'}"
        )
    best = max(scored, key=lambda t: (t.score, -t.number))
    return TuningResult(
        trials=finished,
        best=best,
        workers=workers,
        threads_per_fit=data.threads,
        wall_s=time.perf_counter() - started,
        stopped_early=stopped_early,
    )


def _pool(workers: int, data: FoldData) -> Any:
    from joblib.externals.loky import ProcessPoolExecutor

    # Threads of native libraries in a worker: LightGBM gets its count per fit; the others
    # (OpenMP, BLAS) must not each start one per core beside it.
    single = "1" if data.threads == 1 else str(data.threads)
    return ProcessPoolExecutor(
        max_workers=workers,
        initializer=_init_worker,
        initargs=(data,),
        env={"OMP_NUM_THREADS": single, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )


def _plain(value: Any) -> Scalar:
    """numpy scalars from hyperopt as plain Python values (JSON, MLflow params)."""
    if isinstance(value, np.generic):
        plain: Scalar = value.item()
        return plain
    return value


def _elapsed(started: float) -> float:
    return time.perf_counter() - started
