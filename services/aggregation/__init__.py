"""Aggregation: the raw blobs of a data set -> one consolidated, validated data set."""

from __future__ import annotations

from shared.worker import StageContext, StageResult, StageSpec


def aggregate(ctx: StageContext) -> StageResult:
    summary = ctx.recipe.aggregate(
        ctx.input_dirs["data"], ctx.output_dir, ctx.params, ctx.recipe_context
    )
    return StageResult(
        metrics={"rows": float(summary.rows)},
        details={"rows": summary.rows, "files": summary.files, **summary.details},
    )


def build_spec(_settings: object = None) -> StageSpec:
    return StageSpec(stage="aggregation", inputs=("data",), output="dataset", handler=aggregate)
