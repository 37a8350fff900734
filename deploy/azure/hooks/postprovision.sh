#!/bin/sh
# azd postprovision: registers the code asset retrainer-src:$RETRAINER_CODE_VERSION (the
# packages Azure ML jobs run; .amlignore leaves the rest out) unless that version exists.
# Needs the Azure CLI's ml extension: az extension add -n ml
set -eu
: "${AZURE_RESOURCE_GROUP:?}" "${AZURE_ML_WORKSPACE:?}" "${RETRAINER_CODE_VERSION:?}"
if az ml code show --name retrainer-src --version "$RETRAINER_CODE_VERSION" \
    --resource-group "$AZURE_RESOURCE_GROUP" --workspace-name "$AZURE_ML_WORKSPACE" >/dev/null 2>&1; then
    echo "code asset retrainer-src:$RETRAINER_CODE_VERSION is registered already"
    exit 0
fi
az ml code create --name retrainer-src --version "$RETRAINER_CODE_VERSION" --path . \
    --resource-group "$AZURE_RESOURCE_GROUP" --workspace-name "$AZURE_ML_WORKSPACE"
