#!/usr/bin/env bash
# Builds the baseline collector of builder-config.yaml with the builder pinned
# in this module's go.mod and prints the binary's path. The binary is cached
# under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/bench-otelcol-<hash>, keyed
# by the manifest and go.sum, so only the first run pays the build (minutes).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
key="$(cat "$here/builder-config.yaml" "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
out="$cache/bench-otelcol-$key"
bin="$out/bench-otelcol"

if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/bench-otelcol-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
sed "s|^\(  output_path:\).*|\1 $work/src|" "$here/builder-config.yaml" >"$work/builder-config.yaml"

start=$SECONDS
(cd "$here" && CGO_ENABLED=0 go tool builder --config "$work/builder-config.yaml") >"$work/build.log" 2>&1 || {
	cat "$work/build.log" >&2
	echo "build.sh: collector builder failed" >&2
	exit 1
}
echo "build.sh: built bench-otelcol in $((SECONDS - start))s" >&2
rm -rf "$out"
mkdir -p "$out"
mv "$work/src/bench-otelcol" "$bin"
echo "$bin"
