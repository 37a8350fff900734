"""Split: the consolidated data set -> train/validation(/test), an immutable data-set version.

When the recipe names a data asset (``Recipe.data_asset``), the split output's prefix is then
registered as a version of it (``shared/data_assets``) — on a fresh split and on a cache hit
alike, since the version is per (asset, prefix): the same data is the same version — and the
success event's details name the asset and version, which the coordinator keeps on the run and
hands to train and register.
"""

from __future__ import annotations

from shared.data_assets.port import DETAIL_NAME, DETAIL_PATH, DETAIL_VERSION, DataAssets
from shared.messages import RunStage, StageSucceeded
from shared.recipe import Recipe
from shared.settings import CommonSettings
from shared.worker import StageContext, StageResult, StageSpec

OUTPUT = "split"


def split(ctx: StageContext) -> StageResult:
    summary = ctx.recipe.split(
        ctx.input_dirs["dataset"], ctx.output_dir, ctx.params, ctx.recipe_context
    )
    details = {"rows": summary.rows, "files": summary.files, **summary.details}
    if summary.reports:
        details["reports"] = dict(summary.reports)
    return StageResult(details=details)


def register_data_asset(
    assets: DataAssets, command: RunStage, recipe: Recipe, event: StageSucceeded
) -> StageSucceeded:
    """The success event with the data-asset version its output was registered as."""
    name = recipe.data_asset_name(command.entity)
    if name is None:
        return event
    version = assets.register(
        name, event.outputs[OUTPUT], correlation_id=str(command.correlation_id)
    )
    details = {
        **event.details,
        DETAIL_NAME: version.name,
        DETAIL_VERSION: version.version,
        DETAIL_PATH: version.path,
    }
    return event.model_copy(update={"details": details})


def build_spec(
    settings: CommonSettings | None = None, *, data_assets: DataAssets | None = None
) -> StageSpec:
    """The split stage; its outputs are registered as data-asset versions in ``data_assets``
    (default: the store ``settings`` configure; neither given: not registered)."""
    if data_assets is None and settings is not None:
        from shared.bootstrap import create_data_assets

        data_assets = create_data_assets(settings)
    assets = data_assets
    return StageSpec(
        stage="split",
        inputs=("dataset",),
        output=OUTPUT,
        handler=split,
        after_success=None
        if assets is None
        else lambda command, recipe, event: register_data_asset(assets, command, recipe, event),
    )
