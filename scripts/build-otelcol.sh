#!/usr/bin/env bash
# Builds the OpenTelemetry Collector described by DIR/builder-config.yaml with
# the Collector Builder pinned in DIR's go.mod, and prints the binary's path.
# The binary is cached under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/NAME-<hash>,
# keyed by the manifest and DIR's go.mod and go.sum, so only the first run
# pays the build (minutes).
#
#   scripts/build-otelcol.sh DIR NAME      NAME: the manifest's dist name
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: build-otelcol.sh DIR NAME" >&2; exit 2; }
dir="$(cd "$1" && pwd)"
name=$2
cache="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
key="$(cat "$dir/builder-config.yaml" "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)"
out="$cache/$name-$key"
bin="$out/$name"

if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/$name-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Same manifest, with the output redirected into the cache.
sed "s|^\(  output_path:\).*|\1 $work/src|" "$dir/builder-config.yaml" >"$work/builder-config.yaml"

start=$SECONDS
(cd "$dir" && CGO_ENABLED=0 go tool builder --config "$work/builder-config.yaml") >"$work/build.log" 2>&1 || {
	cat "$work/build.log" >&2
	echo "build-otelcol.sh: collector builder failed for $dir" >&2
	exit 1
}
echo "build-otelcol.sh: built $name in $((SECONDS - start))s" >&2

rm -rf "$out"
mkdir -p "$out"
mv "$work/src/$name" "$bin"
echo "$bin"
