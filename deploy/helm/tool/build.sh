#!/usr/bin/env bash
# build.sh builds helm (helm.sh/helm/v4 cmd/helm, pinned with every dependency
# in this wrapper module's go.mod and go.sum) from the Go module proxy and
# prints the binary's path.
#
# The binary is cached under ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/helm-<version>,
# keyed by a hash of go.mod, go.sum and this script: a warm run takes
# milliseconds, a cold one about a minute on 2 cores. Everything but the path
# goes to stderr.
#
#   build.sh            build when needed
#   build.sh -cached    only a cached binary: exit 3 when there is none
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/^[[:space:]]*helm\.sh\/helm\/v4 \(v[^ ]*\).*/\1/p' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no helm.sh/helm/v4 version in $here/go.mod" >&2; exit 1; }
cache="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
out="$cache/helm-$version"

key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)"
if [[ -x "$out/helm" && "$(cat "$out/.key" 2>/dev/null)" == "$key" ]]; then
	echo "$out/helm"
	exit 0
fi
if [[ "${1:-}" == "-cached" ]]; then
	echo "build.sh: helm $version is not built in $out" >&2
	exit 3
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Stamp the version as helm's Makefile does, so that `helm version` and the
# chart's kubeVersion checks see it.
flags=(-trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version")
start=$SECONDS
echo "building helm $version into $out (cold: about a minute)" >&2
(cd "$here" && CGO_ENABLED=0 go build "${flags[@]}" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm) >&2
mv -f "$tmp/helm" "$out/helm"
echo "$key" >"$out/.key"
echo "built in $((SECONDS - start))s" >&2
echo "$out/helm"
