"""The one training entry point, run in a worker's subprocess and as an Azure ML command job.

    python -m services.train.entrypoint --recipe NAME --split DIR --output DIR \\
        [--params-json '{...}' | base64:...] [--correlation-id ID] [--recipe-module MODULE ...]

Runs ``recipe.train(split, output/artifacts, params)`` and writes ``output/result.json``
(recipe, metrics, params, artifacts relative to ``output``). It does not log to MLflow: where
that happens (the worker after the job, or the job itself with Azure ML's tracking URI) is
the caller's choice.

Exit codes: 0 done; 2 bad input that a retry cannot fix (unknown recipe, invalid params,
``DataValidationError``, missing split folder), message on stderr; 1 anything else.
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

from shared.compute.port import ARTIFACTS_DIR, PARAMS_BASE64_PREFIX, RESULT_FILE
from shared.errors import PermanentError

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
    return parser.parse_args(argv)


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
    from recipes.registry import get_recipe

    recipe = get_recipe(args.recipe, args.recipe_module)
    raw_params = _load_params(args.params_json)
    try:
        params = recipe.parse_params(raw_params)
    except ValidationError as exc:
        raise BadInputError(f"invalid params for recipe {recipe.name!r}: {exc}") from None
    split_dir: Path = args.split
    if not split_dir.is_dir():
        raise BadInputError(f"split folder does not exist: {split_dir}")
    output_dir: Path = args.output
    artifacts_dir = output_dir / ARTIFACTS_DIR
    artifacts_dir.mkdir(parents=True, exist_ok=True)

    result = recipe.train(split_dir, artifacts_dir, params)

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
    }
    partial = output_dir / (RESULT_FILE + ".partial")
    partial.write_text(json.dumps(record, indent=2, default=str))
    os.replace(partial, output_dir / RESULT_FILE)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parse_args(argv)
    try:
        record = run(args)
    except PermanentError as exc:
        print(f"bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        traceback.print_exc()
        print(f"training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    log.info("trained %s: %s", record["recipe"], record["metrics"])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
