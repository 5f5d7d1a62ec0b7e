#!/usr/bin/env bash
# build.sh builds promtool (github.com/prometheus/prometheus cmd/promtool,
# pinned with every dependency in this wrapper module's go.mod and go.sum)
# and prints the binary's path; cached under
# ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/promtool-<version> (cold:
# several minutes on 2 cores). See scripts/build-gotool.sh.
#
#   build.sh            build when needed
#   build.sh -cached    only a cached binary: exit 3 when there is none
#
# Built with -tags remove_all_sd: promtool checks and tests rules without any
# service discovery, and leaving the cloud SDKs out halves the build. The
# version is stamped as Prometheus' promu does, for `promtool --version`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../scripts/build-gotool.sh" "$here" promtool github.com/prometheus/prometheus \
	github.com/prometheus/prometheus/cmd/promtool "$@" -- \
	-tags remove_all_sd -ldflags "-s -w -X github.com/prometheus/common/version.Version={v}"
