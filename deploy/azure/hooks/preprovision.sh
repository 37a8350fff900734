#!/bin/sh
# azd preprovision: the code version (the commit, plus a hash of any local changes) is recorded on
# every model version and names the Azure ML code asset the train stage submits.
set -eu
version=$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    # Local changes: a version of their own, so a changed tree is never taken for the commit.
    version="$version-$( (git diff HEAD; git ls-files --others --exclude-standard) | sha1sum | cut -c1-8)"
fi
azd env set RETRAINER_CODE_VERSION "$version"
