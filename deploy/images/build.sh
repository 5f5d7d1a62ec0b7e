#!/usr/bin/env bash
# Builds the tokenwatch container images with the local Docker engine,
# without pulling anything: the binaries are compiled here (static,
# CGO_ENABLED=0) and copied onto `FROM scratch` together with
# deploy/images/passwd, deploy/images/group and a CA bundle.
#
#   deploy/images/build.sh                  # tokenwatch/agent:dev, tokenwatch/aggregator:dev
#   IMAGE_PREFIX=registry.example.com/tokenwatch TAG=v0.1.0 deploy/images/build.sh
#   IMAGES="otelcol" deploy/images/build.sh # the collector of deploy/collector
#
# Environment:
#   IMAGES        which images: any of agent, aggregator, otelcol
#                 (default "agent aggregator"; otelcol runs the collector
#                 builder, minutes the first time, then cached)
#   IMAGE_PREFIX  image name prefix (default tokenwatch)
#   TAG           image tag (default dev)
#   VERSION       version stamped into the tokenwatch binaries (default: TAG)
#   CA_BUNDLE     PEM bundle copied to /etc/ssl/certs/ca-certificates.crt
#                 (default /etc/ssl/certs/ca-certificates.crt); needed to
#                 verify TLS peers such as a collector or a SIEM
# Prints the image references, one per line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
images="${IMAGES:-agent aggregator}"
prefix="${IMAGE_PREFIX:-tokenwatch}"
tag="${TAG:-dev}"
version="${VERSION:-$tag}"
ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [[ ! -s "$ca" ]]; then
	echo "build.sh: CA bundle $ca not found; set CA_BUNDLE" >&2
	exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin"

pkgs=()
for name in $images; do
	case "$name" in
	agent | aggregator) pkgs+=("./$name") ;;
	otelcol) cp "$(bash "$root/deploy/collector/build.sh")" "$ctx/bin/otelcol" ;;
	*)
		echo "build.sh: unknown image $name (agent, aggregator, otelcol)" >&2
		exit 1
		;;
	esac
done
if ((${#pkgs[@]})); then
	(
		cd "$root"
		CGO_ENABLED=0 go build -trimpath \
			-ldflags "-s -w -X github.com/tokenwatch/tokenwatch/internal/version.Version=$version" \
			-o "$ctx/bin/" "${pkgs[@]}"
	) >&2
fi

for name in $images; do
	c="$ctx/$name"
	mkdir -p "$c/state"
	cp "$here/passwd" "$here/group" "$c/"
	cp "$ca" "$c/ca-certificates.crt"
	cp "$ctx/bin/$name" "$c/tokenwatch-$name"
	cp "$here/Dockerfile.$name" "$c/Dockerfile"
	image="$prefix/$name:$tag"
	docker build --quiet --tag "$image" \
		--label "org.opencontainers.image.version=$version" \
		--label "org.opencontainers.image.title=tokenwatch-$name" \
		"$c" >&2
	echo "$image"
done
