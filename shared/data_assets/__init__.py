"""Data-asset versions: the port (``port.py``) and its adapters.

``local.py`` keeps records in the blob store; ``azureml.py`` registers Azure ML data assets
(``azure-ai-ml`` is imported by that module only). ``shared/bootstrap.py`` picks one.
"""

from shared.data_assets.port import (
    ASSET_SCHEME,
    LATEST,
    TRAIN_TABLE,
    VALIDATION_TABLE,
    DataAssetNotFoundError,
    DataAssetRequestError,
    DataAssets,
    DataAssetUnavailableError,
    DataAssetVersion,
    InvalidDataAssetError,
    is_asset_reference,
    parse_asset_reference,
    validate_asset_name,
)

__all__ = [
    "ASSET_SCHEME",
    "LATEST",
    "TRAIN_TABLE",
    "VALIDATION_TABLE",
    "DataAssetNotFoundError",
    "DataAssetRequestError",
    "DataAssetUnavailableError",
    "DataAssetVersion",
    "DataAssets",
    "InvalidDataAssetError",
    "is_asset_reference",
    "parse_asset_reference",
    "validate_asset_name",
]
