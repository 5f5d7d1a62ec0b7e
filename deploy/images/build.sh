#!/usr/bin/env bash
# Builds the tokenwatch container images with the local Docker engine,
# without pulling anything: the binaries are compiled here (static,
# CGO_ENABLED=0, cross-compiled for each architecture) and copied onto
# `FROM scratch` together with deploy/images/passwd, deploy/images/group and
# a CA bundle. Nothing runs inside the image while it is built, so no
# emulator is needed for a foreign architecture, and Docker's classic builder
# suffices (no buildx): `docker build --platform linux/<arch>` records the
# architecture in the image.
#
#   deploy/images/build.sh                  # tokenwatch/agent:dev, tokenwatch/aggregator:dev
#   IMAGE_PREFIX=registry.example.com/tokenwatch TAG=v0.1.0 deploy/images/build.sh
#   IMAGES="otelcol" deploy/images/build.sh # the collector of deploy/collector
#   PUSH=1 IMAGE_PREFIX=registry.example.com/tokenwatch TAG=v0.1.0 deploy/images/build.sh
#
# One tag per architecture, PREFIX/NAME:TAG-<arch> (e.g. agent:dev-arm64),
# and PREFIX/NAME:TAG for the Docker engine's own architecture, the one the
# manifests run unchanged here. A local engine cannot hold a multi-architecture
# image (a manifest list lives only in a registry): with PUSH=1 the script
# pushes the per-architecture tags and then makes and pushes PREFIX/NAME:TAG as
# a manifest list of them (`docker manifest`), so that every node pulls its
# own architecture by the manifests' one name.
#
# Environment:
#   IMAGES        which images: any of agent, aggregator, otelcol
#                 (default "agent aggregator"; otelcol runs the collector
#                 builder, minutes the first time per architecture, then cached)
#   ARCHES        linux architectures (default "amd64 arm64")
#   IMAGE_PREFIX  image name prefix (default tokenwatch)
#   TAG           image tag (default dev)
#   VERSION       version stamped into the tokenwatch binaries (default: TAG)
#   CA_BUNDLE     PEM bundle copied to /etc/ssl/certs/ca-certificates.crt
#                 (default /etc/ssl/certs/ca-certificates.crt); needed to
#                 verify TLS peers such as a collector or a SIEM
#   PUSH          1: push the per-architecture tags and a manifest list as TAG
#   REGISTRY_INSECURE  1: the registry speaks plain HTTP (`docker manifest
#                 --insecure`); the engine must allow it too (it does for a
#                 loopback registry)
# Prints the image references, one per line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
images="${IMAGES:-agent aggregator}"
prefix="${IMAGE_PREFIX:-tokenwatch}"
tag="${TAG:-dev}"
version="${VERSION:-$tag}"
ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
arches="${ARCHES:-amd64 arm64}"
push="${PUSH:-}"
manifest_opts=()
if [[ "${REGISTRY_INSECURE:-}" == 1 ]]; then
	manifest_opts=(--insecure)
fi
engine_arch="$(docker version --format '{{.Server.Arch}}')"

if [[ ! -s "$ca" ]]; then
	echo "build.sh: CA bundle $ca not found; set CA_BUNDLE" >&2
	exit 1
fi

# The commit the binaries report in --version and tokenwatch_build_info
# (CI builds with -buildvcs=false, so go build records none itself).
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin"

pkgs=()
for name in $images; do
	case "$name" in
	agent | aggregator) pkgs+=("./$name") ;;
	otelcol) ;;
	*)
		echo "build.sh: unknown image $name (agent, aggregator, otelcol)" >&2
		exit 1
		;;
	esac
done
for arch in $arches; do
	case "$arch" in
	amd64 | arm64) ;;
	*)
		echo "build.sh: unsupported architecture $arch (amd64, arm64)" >&2
		exit 1
		;;
	esac
	mkdir -p "$ctx/bin/$arch"
	if [[ " $images " == *" otelcol "* ]]; then
		cp "$(bash "$root/deploy/collector/build.sh" "$arch")" "$ctx/bin/$arch/otelcol"
	fi
	if ((${#pkgs[@]})); then
		(
			cd "$root"
			CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath \
				-ldflags "-s -w -X github.com/tokenwatch/tokenwatch/internal/version.Version=$version -X github.com/prometheus/common/version.Revision=$commit" \
				-o "$ctx/bin/$arch/" "${pkgs[@]}"
		) >&2
	fi
done

for name in $images; do
	image="$prefix/$name:$tag"
	refs=()
	for arch in $arches; do
		c="$ctx/$arch/$name"
		mkdir -p "$c/state"
		cp "$here/passwd" "$here/group" "$c/"
		cp "$ca" "$c/ca-certificates.crt"
		cp "$ctx/bin/$arch/$name" "$c/tokenwatch-$name"
		cp "$here/Dockerfile.$name" "$c/Dockerfile"
		ref="$image-$arch"
		# --no-cache: the classic builder's layer cache ignores the platform
		# and would reuse another architecture's layers (then refuse them).
		docker build --quiet --no-cache --platform "linux/$arch" --tag "$ref" \
			--label "org.opencontainers.image.version=$version" \
			--label "org.opencontainers.image.title=tokenwatch-$name" \
			"$c" >&2
		refs+=("$ref")
		echo "$ref"
		if [[ "$arch" == "$engine_arch" ]]; then
			docker tag "$ref" "$image"
			echo "$image"
		fi
	done
	if [[ "$push" == 1 ]]; then
		for ref in "${refs[@]}"; do
			docker push --quiet "$ref" >&2
		done
		docker manifest rm "$image" >/dev/null 2>&1 || true
		docker manifest create "${manifest_opts[@]}" "$image" "${refs[@]}" >&2
		docker manifest push "${manifest_opts[@]}" --purge "$image" >&2
	fi
done
