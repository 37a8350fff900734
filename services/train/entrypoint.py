"""The one training entry point, run in a worker's subprocess and as an Azure ML command job.

    python -m services.train.entrypoint --recipe NAME --split DIR --output DIR \\
        [--params-json '{...}' | base64:...] [--correlation-id ID] [--recipe-module MODULE ...]
        [--mlflow --experiment NAME [--tag KEY=VALUE ...]]

Runs ``recipe.train(split, output/artifacts, params, ctx)`` and writes ``output/result.json``
(recipe, metrics, params, artifacts relative to ``output``). With ``--mlflow`` it also logs
the run and the model to MLflow (``RETRAINER_MLFLOW_TRACKING_URI``, or ``MLFLOW_TRACKING_URI``
as Azure ML sets it in a job) exactly as the train worker does in-process, and adds
``mlflow_run_id``, ``model_uri`` and ``experiment_id`` to result.json: the model object lives
only in this process, so this is where it must be logged.

On failure it writes ``output/error.json`` (``error``, ``error_type``, ``retryable``) for whoever
follows the job. Exit codes: 0 done; 2 bad input that a retry cannot fix (unknown recipe,
invalid params, ``DataValidationError``, missing split folder), message on stderr; 1 anything
else.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.compute.port import ARTIFACTS_DIR, ERROR_FILE, PARAMS_BASE64_PREFIX, RESULT_FILE
from shared.errors import PermanentError
from shared.recipe import RecipeContext
from shared.stage_logs import failure_log

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

log = logging.getLogger("services.train.entrypoint")


class BadInputError(PermanentError):
    pass


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.train.entrypoint", description="Train one recipe on a split."
    )
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--split", required=True, type=Path, help="the split folder")
    parser.add_argument("--output", required=True, type=Path, help="result.json + artifacts/")
    parser.add_argument("--params-json", default="{}", help="the recipe's params, a JSON object")
    parser.add_argument("--correlation-id", default="")
    parser.add_argument(
        "--recipe-module",
        action="append",
        default=[],
        help="also load recipes from this module (repeatable)",
    )
    parser.add_argument("--mlflow", action="store_true", help="log the run and model to MLflow")
    parser.add_argument("--experiment", default="", help="MLflow experiment (with --mlflow)")
    parser.add_argument(
        "--tag", action="append", default=[], help="MLflow run tag KEY=VALUE (repeatable)"
    )
    return parser.parse_args(argv)


def _parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInputError(f"--tag must be KEY=VALUE, got {pair!r}")
        tags[key] = value
    return tags


def _load_params(text: str) -> dict[str, Any]:
    """A JSON object, or ``base64:`` + its URL-safe base64 (shell-safe, used by Azure ML)."""
    try:
        if text.startswith(PARAMS_BASE64_PREFIX):
            text = base64.urlsafe_b64decode(text[len(PARAMS_BASE64_PREFIX) :]).decode()
        params = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"--params-json is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise BadInputError(f"--params-json must be a JSON object, not {type(params).__name__}")
    return params


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and write result.json; returns what it wrote."""
    from shared.recipe_registry import get_recipe

    recipe = get_recipe(args.recipe, args.recipe_module)
    raw_params = _load_params(args.params_json)
    try:
        params = recipe.parse_params(raw_params)
    except ValidationError as exc:
        raise BadInputError(f"invalid params for recipe {recipe.name!r}: {exc}") from None
    tags = _parse_tags(args.tag)
    if args.mlflow and not args.experiment:
        raise BadInputError("--mlflow needs --experiment")
    split_dir: Path = args.split
    if not split_dir.is_dir():
        raise BadInputError(f"split folder does not exist: {split_dir}")
    output_dir: Path = args.output
    artifacts_dir = output_dir / ARTIFACTS_DIR
    artifacts_dir.mkdir(parents=True, exist_ok=True)

    result = recipe.train(split_dir, artifacts_dir, params, RecipeContext())

    def relative(path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(output_dir.resolve()))
        except ValueError:
            return str(path)

    record: dict[str, Any] = {
        "correlation_id": args.correlation_id,
        "recipe": recipe.name,
        "recipe_version": recipe.version,
        "flavor": result.flavor,
        "metrics": {name: float(value) for name, value in result.metrics.items()},
        "params": {**params.model_dump(mode="json"), **result.params},
        "artifacts": [relative(path) for path in result.artifacts],
        "children": len(result.children),
    }
    if args.mlflow:
        from shared.bootstrap import create_registry
        from shared.settings import CommonSettings

        settings = CommonSettings()
        if settings.mlflow_tracking_uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
            # In an Azure ML job: the workspace's MLflow, which Azure ML sets for the job.
            settings.mlflow_tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
        logged = create_registry(settings).log_training(
            experiment_name=args.experiment,
            correlation_id=args.correlation_id,
            result=result,
            pip_requirements=recipe.pip_requirements,
            tags={"recipe": recipe.name, "recipe_version": recipe.version, **tags},
        )
        record.update(
            mlflow_run_id=logged.run_id,
            model_uri=logged.model_uri,
            experiment_id=logged.experiment_id,
        )
    _write_json(output_dir / RESULT_FILE, record)
    return record


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2, default=str))
    os.replace(partial, path)


def _report_failure(output_dir: Path, exc: BaseException, *, retryable: bool) -> None:
    try:
        _write_json(
            output_dir / ERROR_FILE,
            {
                "error": str(exc) or type(exc).__name__,
                "error_type": type(exc).__name__,
                "retryable": retryable,
                # The traceback, bounded and redacted: the attempt's log on the dashboard.
                "log": failure_log(exc),
            },
        )
    except OSError:
        log.exception("could not write %s", ERROR_FILE)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parse_args(argv)
    try:
        record = run(args)
    except PermanentError as exc:
        print(f"bad input: {exc}", file=sys.stderr)
        _report_failure(args.output, exc, retryable=False)
        return EXIT_BAD_INPUT
    except Exception as exc:
        traceback.print_exc()
        print(f"training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _report_failure(args.output, exc, retryable=True)
        return EXIT_FAILED
    log.info("trained %s: %s", record["recipe"], record["metrics"])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
