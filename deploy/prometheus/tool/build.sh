#!/usr/bin/env bash
# build.sh builds promtool (github.com/prometheus/prometheus cmd/promtool,
# pinned with every dependency in this wrapper module's go.mod and go.sum)
# from the Go module proxy and prints the binary's path.
#
# The binary is cached under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/promtool-<version>,
# keyed by a hash of go.mod, go.sum and this script: a warm run takes
# milliseconds, a cold one several minutes on 2 cores. It is built with
# -tags remove_all_sd: promtool checks and tests rules without any service
# discovery, and leaving the cloud SDKs out halves the build. Everything but
# the path goes to stderr.
#
#   build.sh            build when needed
#   build.sh -cached    only a cached binary: exit 3 when there is none
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/^[[:space:]]*github\.com\/prometheus\/prometheus \(v[^ ]*\).*/\1/p' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no github.com/prometheus/prometheus version in $here/go.mod" >&2; exit 1; }
cache="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
out="$cache/promtool-$version"

key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)"
if [[ -x "$out/promtool" && "$(cat "$out/.key" 2>/dev/null)" == "$key" ]]; then
	echo "$out/promtool"
	exit 0
fi
if [[ "${1:-}" == "-cached" ]]; then
	echo "build.sh: promtool $version is not built in $out" >&2
	exit 3
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Stamp the version as Prometheus' promu does, so that `promtool --version` says it.
flags=(-trimpath -tags remove_all_sd -ldflags "-s -w -X github.com/prometheus/common/version.Version=${version#v}")
start=$SECONDS
echo "building promtool $version into $out (cold: several minutes)" >&2
(cd "$here" && CGO_ENABLED=0 go build "${flags[@]}" -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool) >&2
mv -f "$tmp/promtool" "$out/promtool"
echo "$key" >"$out/.key"
echo "built in $((SECONDS - start))s" >&2
echo "$out/promtool"
