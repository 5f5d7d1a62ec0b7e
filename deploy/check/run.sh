#!/usr/bin/env bash
# Checks tokenwatch's deploy kit with the real tools; CI runs this script.
#
#   deploy/check/run.sh            # everything
#   deploy/check/run.sh -short     # only what needs no built tool or Docker
#
# It builds (or takes from ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}) the
# collector of deploy/collector (builder v0.159.0; cold: about 5-9 minutes on
# 2 cores; about 4 more for the other of amd64 and arm64, which the image
# test also builds), a registry through deploy/images/registry/build.sh
# (cold: about 2 minutes) and kube-apiserver, etcd and kubeadm through e2e/k8s/build.sh
# (cold: about 4 minutes) and helm through deploy/helm/tool/build.sh (cold:
# about a minute) and promtool through deploy/prometheus/tool/build.sh (cold:
# several minutes), then runs the Go tests of this module: promtool check and
# test of the alerting rules, kustomize builds of
# every overlay, the Helm chart (lint, template, equal to the overlays),
# server-side dry runs on a real kube-apiserver,
# kubeadm config validate, the audit policy, the collector config, and the
# container images run with the manifests' security settings (skipped, with a
# message, when no Docker daemon answers).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export TOKENWATCH_CACHE="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"

short=""
if [[ "${1:-}" == "-short" ]]; then
	short="-short"
fi

cd "$here"
unformatted="$(gofmt -l .)"
if [[ -n "$unformatted" ]]; then
	echo "deploy/check: gofmt needed: $unformatted" >&2
	exit 1
fi
go vet ./...

if [[ -z "$short" ]]; then
	start=$SECONDS
	bash "$root/deploy/collector/build.sh" >/dev/null
	echo "deploy/check: collector ready after $((SECONDS - start))s" >&2
	# The image test builds the collector image for amd64 and arm64: the
	# other architecture's binary is a second compile, done here so that
	# it counts against no test's timeout.
	start=$SECONDS
	for arch in amd64 arm64; do
		bash "$root/deploy/collector/build.sh" "$arch" >/dev/null
	done
	echo "deploy/check: collector for the other architecture ready after $((SECONDS - start))s" >&2
	start=$SECONDS
	bash "$root/deploy/images/registry/build.sh" >/dev/null
	echo "deploy/check: registry (for the images' manifest list) ready after $((SECONDS - start))s" >&2
	start=$SECONDS
	bash "$root/e2e/k8s/build.sh" >/dev/null
	echo "deploy/check: kube-apiserver, etcd, kubeadm ready after $((SECONDS - start))s" >&2
	start=$SECONDS
	bash "$root/deploy/helm/tool/build.sh" >/dev/null
	echo "deploy/check: helm ready after $((SECONDS - start))s" >&2
	start=$SECONDS
	bash "$root/deploy/prometheus/tool/build.sh" >/dev/null
	echo "deploy/check: promtool ready after $((SECONDS - start))s" >&2
fi

# -v so that a skipped check says why in the CI log.
go test -count=1 -v -timeout 30m $short ./...
