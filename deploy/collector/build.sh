#!/usr/bin/env bash
# Builds the tokenwatch-otelcol collector of builder-config.yaml (the builder
# pinned in this module's go.mod) and prints the binary's path; cached by
# manifest and go.sum (see scripts/build-otelcol.sh).
#
#   deploy/collector/build.sh            # for this host
#   deploy/collector/build.sh arm64      # linux/arm64, cross-compiled
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../scripts/build-otelcol.sh" "$here" tokenwatch-otelcol "$@"
