"""Parameters of the image classification recipe; ``{}`` gives the production configuration.

``weights`` defaults to ``"imagenet"``, as in the use case this recipe is ported from: a frozen
MobileNet is only a useful feature extractor with its pretrained weights, so a run that forgot
the setting must not quietly train a head on random features. The weights file is fetched once
by Keras into ``$KERAS_HOME/models`` (default ``~/.keras/models``); where that cannot happen
(no network) the train stage fails with a ``ConfigurationError`` saying which file to put
there. Offline demos and tests pass ``weights="none"`` (random initialisation), usually with a
small ``alpha`` and ``image_size``; with random weights only ``trainable_base=True`` and many
epochs learn anything (a frozen random base gives near-zero features).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recipes.base import RecipeParams

Weights = Literal["imagenet", "none"]

# Width multipliers Keras publishes ImageNet weights for.
IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)
# Input sizes with their own ImageNet weights; other sizes load the 224 ones (the convolution
# weights of a model without its top do not depend on the input size).
IMAGENET_SIZES = (128, 160, 192, 224)


class ImageClassificationParams(RecipeParams):
    # Data (aggregate resizes every image to image_size x image_size RGB once).
    image_size: int = Field(
        default=224, ge=32, le=1024, description="square input side in pixels (MobileNet: >= 32)"
    )
    validation_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="share of each label held out for validation"
    )
    seed: int = Field(default=0, ge=0, description="seeds the split, weight init and shuffling")
    # Model.
    weights: Weights = Field(
        default="imagenet", description='"imagenet" (pretrained base) or "none" (random init)'
    )
    alpha: float = Field(default=1.0, gt=0.0, le=2.0, description="MobileNet width multiplier")
    trainable_base: bool = Field(
        default=False, description="fine-tune MobileNet too; False trains only the new head"
    )
    # Training.
    batch_size: int = Field(default=32, ge=1, le=4096)
    epochs: int = Field(default=4, ge=1, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0, description="Adam learning rate")

    @model_validator(mode="after")
    def _imagenet_alpha(self) -> ImageClassificationParams:
        if self.weights == "imagenet" and self.alpha not in IMAGENET_ALPHAS:
            raise ValueError(
                f"ImageNet weights exist for alpha in {list(IMAGENET_ALPHAS)} only, got "
                f"{self.alpha}; pick one of those or set weights='none'"
            )
        return self


def coerce_params(params: RecipeParams | None) -> ImageClassificationParams:
    """The stage functions accept any ``RecipeParams``; re-validate foreign ones as ours."""
    if isinstance(params, ImageClassificationParams):
        return params
    if params is None:
        return ImageClassificationParams()
    return ImageClassificationParams.model_validate(params.model_dump())
