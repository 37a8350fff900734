"""Aggregation: the raw blobs of a data set -> one consolidated, validated data set."""

from __future__ import annotations

from shared.history import save_record
from shared.worker import StageContext, StageResult, StageSpec


def aggregate(ctx: StageContext) -> StageResult:
    summary = ctx.recipe.aggregate(
        ctx.input_dirs["data"], ctx.output_dir, ctx.params, ctx.recipe_context
    )
    if summary.history_record is not None:
        save_record(ctx.output_dir, summary.history_record)
    details = {"rows": summary.rows, "files": summary.files, **summary.details}
    if summary.reports:
        details["reports"] = dict(summary.reports)
    return StageResult(metrics={"rows": float(summary.rows)}, details=details)


def build_spec(_settings: object = None) -> StageSpec:
    return StageSpec(stage="aggregation", inputs=("data",), output="dataset", handler=aggregate)
