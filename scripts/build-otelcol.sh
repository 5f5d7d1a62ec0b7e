#!/usr/bin/env bash
# Builds the OpenTelemetry Collector described by DIR/builder-config.yaml with
# the Collector Builder pinned in DIR's go.mod, and prints the binary's path.
# The binary is cached under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/NAME-<hash>,
# keyed by the manifest and DIR's go.mod and go.sum, so only the first run
# pays the build (minutes).
#
#   scripts/build-otelcol.sh DIR NAME [GOARCH]
#
# NAME is the manifest's dist name. GOARCH (default: the host's) cross-compiles
# a linux/GOARCH binary instead: the builder generates the sources and fetches
# the modules, then `go build` compiles them for that architecture with the
# builder's own flags (the builder cannot: `go tool` would build the builder
# itself for GOARCH). A second architecture costs a second full compile.
set -euo pipefail

[[ $# -eq 2 || $# -eq 3 ]] || { echo "usage: build-otelcol.sh DIR NAME [GOARCH]" >&2; exit 2; }
dir="$(cd "$1" && pwd)"
name=$2
arch="${3:-}"
if [[ "$arch" == "$(go env GOHOSTARCH)" && "$(go env GOHOSTOS)" == linux ]]; then
	arch=""
fi
cache="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
key="$(cat "$dir/builder-config.yaml" "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)"
out="$cache/$name-$key"
if [[ -n "$arch" ]]; then
	out="$cache/$name-linux-$arch-$key"
fi
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
skip=()
if [[ -n "$arch" ]]; then
	skip=(--skip-compilation)
fi
(cd "$dir" && CGO_ENABLED=0 go tool builder --config "$work/builder-config.yaml" "${skip[@]}") >"$work/build.log" 2>&1 || {
	cat "$work/build.log" >&2
	echo "build-otelcol.sh: collector builder failed for $dir" >&2
	exit 1
}
if [[ -n "$arch" ]]; then
	# The flags the builder compiles with (its default ldflags "-s -w").
	(cd "$work/src" && CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -ldflags="-s -w" -o "$name" .) >>"$work/build.log" 2>&1 || {
		cat "$work/build.log" >&2
		echo "build-otelcol.sh: go build for linux/$arch failed for $dir" >&2
		exit 1
	}
fi
echo "build-otelcol.sh: built $name${arch:+ for linux/$arch} in $((SECONDS - start))s" >&2

rm -rf "$out"
mkdir -p "$out"
mv "$work/src/$name" "$bin"
echo "$bin"
