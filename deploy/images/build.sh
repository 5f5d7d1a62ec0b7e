#!/usr/bin/env bash
# Builds the tokenwatch container images from the repository with the local
# Docker engine, without pulling anything: the binaries are compiled here
# (static, CGO_ENABLED=0) and copied onto `FROM scratch` together with
# deploy/images/passwd, deploy/images/group and a CA bundle.
#
#   deploy/images/build.sh                  # tokenwatch/agent:dev, tokenwatch/aggregator:dev
#   IMAGE_PREFIX=registry.example.com/tokenwatch TAG=v0.1.0 deploy/images/build.sh
#
# Environment:
#   IMAGE_PREFIX  image name prefix (default tokenwatch)
#   TAG           image tag (default dev)
#   VERSION       version stamped into the binaries (default: TAG)
#   CA_BUNDLE     PEM bundle copied to /etc/ssl/certs/ca-certificates.crt
#                 (default /etc/ssl/certs/ca-certificates.crt); the aggregator
#                 needs it to verify a TLS OpenTelemetry Collector
# Prints the two image references, one per line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
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

(
	cd "$root"
	CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X github.com/tokenwatch/tokenwatch/internal/version.Version=$version" \
		-o "$ctx/bin/" ./agent ./aggregator
) >&2

for name in agent aggregator; do
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
