#!/usr/bin/env bash
# build.sh builds the CNCF Distribution registry
# (github.com/distribution/distribution/v3 cmd/registry, pinned with every
# dependency in this wrapper module's go.mod and go.sum) and prints the
# binary's path; cached under
# ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/registry-<version> (cold: about
# two minutes on 2 cores). deploy/check runs it on loopback, with in-memory
# storage, to check deploy/images/build.sh's PUSH=1: the per-architecture tags
# and the manifest list that joins them. See scripts/build-gotool.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../scripts/build-gotool.sh" "$here" registry github.com/distribution/distribution/v3 \
	github.com/distribution/distribution/v3/cmd/registry "$@" -- -ldflags "-s -w"
