#!/usr/bin/env bash
# run.sh runs the end-to-end suite: it builds (or finds cached) kube-apiserver,
# kubeadm and etcd from the Go module proxy, then runs every e2e package. The
# tests build tokenwatch's agent and aggregator themselves with `go build`
# from the repository root and run them as processes.
#
#   e2e/run.sh                 the whole suite (CI)
#   e2e/run.sh -run Lossless   extra arguments go to `go test`
#
# TOKENWATCH_E2E_ROTATIONS=1000 e2e/run.sh -run Lossless   a longer soak
# TOKENWATCH_E2E_LOGS=DIR keeps every process's output under DIR.
set -euo pipefail
cd "$(dirname "$0")"
export GOWORK=off

step() { printf '\n=== e2e: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "kube-apiserver, kubeadm, etcd (cached; about 4 minutes cold)"
k8s/build.sh

step "go vet"
go vet ./...

step "go test"
# One package at a time: each starts real processes (apiservers, etcd, the
# agent and aggregator) and 2 cores are shared by all of them.
set +e
go test -count=1 -p 1 -timeout 40m -v "$@" ./...
status=$?
set -e
step "go test exited $status"
exit "$status"
