#!/usr/bin/env bash
# Builds the baseline collector of builder-config.yaml (the builder pinned in
# this module's go.mod) and prints the binary's path; cached by manifest and
# go.sum (see scripts/build-otelcol.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../scripts/build-otelcol.sh" "$here" bench-otelcol
