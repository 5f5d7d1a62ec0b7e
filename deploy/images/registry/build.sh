#!/usr/bin/env bash
# build.sh builds the CNCF Distribution registry
# (github.com/distribution/distribution/v3 cmd/registry, pinned with every
# dependency in this wrapper module's go.mod and go.sum) from the Go module
# proxy and prints the binary's path. deploy/check runs it on loopback, with
# in-memory storage, to check deploy/images/build.sh's PUSH=1: the
# per-architecture tags and the manifest list that joins them.
#
# The binary is cached under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/registry-<version>,
# keyed by a hash of go.mod, go.sum and this script: a warm run takes
# milliseconds, a cold one about two minutes on 2 cores. Everything but the
# path goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/^[[:space:]]*github\.com\/distribution\/distribution\/v3 \(v[^ ]*\).*/\1/p' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no distribution/v3 version in $here/go.mod" >&2; exit 1; }
cache="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
out="$cache/registry-$version"

key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)"
if [[ -x "$out/registry" && "$(cat "$out/.key" 2>/dev/null)" == "$key" ]]; then
	echo "$out/registry"
	exit 0
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building registry $version into $out (cold: about two minutes)" >&2
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/registry" github.com/distribution/distribution/v3/cmd/registry) >&2
mv -f "$tmp/registry" "$out/registry"
echo "$key" >"$out/.key"
echo "built in $((SECONDS - start))s" >&2
echo "$out/registry"
