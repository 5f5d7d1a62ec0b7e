#!/usr/bin/env bash
# build.sh builds helm (helm.sh/helm/v4 cmd/helm, pinned with every dependency
# in this wrapper module's go.mod and go.sum) and prints the binary's path;
# cached under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/helm-<version>
# (cold: about a minute on 2 cores). See scripts/build-gotool.sh.
#
#   build.sh            build when needed
#   build.sh -cached    only a cached binary: exit 3 when there is none
#
# The version is stamped as helm's Makefile does, so that `helm version` and
# the chart's kubeVersion checks see it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../scripts/build-gotool.sh" "$here" helm helm.sh/helm/v4 helm.sh/helm/v4/cmd/helm "$@" -- \
	-ldflags "-s -w -X helm.sh/helm/v4/internal/version.version={version}"
