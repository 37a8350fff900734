"""Split: the consolidated data set -> train/validation(/test), an immutable data-set version."""

from __future__ import annotations

from shared.worker import StageContext, StageResult, StageSpec


def split(ctx: StageContext) -> StageResult:
    summary = ctx.recipe.split(
        ctx.input_dirs["dataset"], ctx.output_dir, ctx.params, ctx.recipe_context
    )
    details = {"rows": summary.rows, "files": summary.files, **summary.details}
    if summary.reports:
        details["reports"] = dict(summary.reports)
    return StageResult(details=details)


def build_spec(_settings: object = None) -> StageSpec:
    return StageSpec(stage="split", inputs=("dataset",), output="split", handler=split)
