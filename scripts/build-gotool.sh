#!/usr/bin/env bash
# build-gotool.sh builds a Go command pinned, with every dependency, in a
# small wrapper module's go.mod and go.sum, from the Go module proxy, and
# prints the binary's path. The tools the checks run (helm, promtool, the
# registry) each have such a module and a build.sh that calls this script.
#
#   build-gotool.sh DIR NAME MODULE PKG [-cached] [-- GO-BUILD-FLAGS...]
#
# DIR is the wrapper module, NAME the binary, MODULE the module whose version
# DIR's go.mod pins (it names the cache folder NAME-<version>), PKG the
# command's package. In GO-BUILD-FLAGS, {version} stands for that version
# and {v} for it without its leading "v". The binary is cached under
# ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/NAME-<version>, keyed by a
# hash of go.mod, go.sum, DIR/build.sh and this script: a warm run takes
# milliseconds. -cached only looks for a cached binary (exit 3 when there is
# none). Everything but the path goes to stderr.
set -euo pipefail

dir="$1" name="$2" module="$3" pkg="$4"
shift 4
cached=""
if [[ "${1:-}" == "-cached" ]]; then
	cached=1
	shift
fi
[[ "${1:-}" == "--" ]] && shift

version="$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$dir/go.mod")"
[[ -n "$version" ]] || { echo "build-gotool.sh: no $module version in $dir/go.mod" >&2; exit 1; }
out="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}/$name-$version"
key="$(cat "$dir/go.mod" "$dir/go.sum" "$dir/build.sh" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [[ -x "$out/$name" && "$(cat "$out/.key" 2>/dev/null)" == "$key" ]]; then
	echo "$out/$name"
	exit 0
fi
if [[ -n "$cached" ]]; then
	echo "build-gotool.sh: $name $version is not built in $out" >&2
	exit 3
fi

flags=()
for f in "$@"; do
	f="${f//\{version\}/$version}"
	flags+=("${f//\{v\}/${version#v}}")
done
mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building $name $version into $out" >&2
(cd "$dir" && CGO_ENABLED=0 go build -trimpath "${flags[@]}" -o "$tmp/$name" "$pkg") >&2
mv -f "$tmp/$name" "$out/$name"
echo "$key" >"$out/.key"
echo "built in $((SECONDS - start))s" >&2
echo "$out/$name"
