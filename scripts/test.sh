#!/usr/bin/env bash
# The whole test suite, exactly what CI runs: unit and integration tests of
# the product, the proto contract check, short fuzz runs, the e2e suite
# (real processes, a real OpenTelemetry Collector receiver, a real
# kube-apiserver built from the Go module proxy) and the deploy-kit checks.
#
#   scripts/test.sh            everything
#   scripts/test.sh unit       product tests only (fast)
#
# FUZZTIME (default 100000x: executions, not seconds) sets each fuzz target's
# run; longer runs on demand:
#   FUZZTIME=2000000x scripts/test.sh fuzz
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" at the deadline on a
# loaded machine (golang/go#75804, fixed in Go 1.27), which is no finding.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
fuzztime=${FUZZTIME:-100000x}

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

unit() {
	step "go vet"
	go vet ./...
	step "go test ./... (race detector)"
	go test -count=1 -race -timeout 15m ./...
	step "function limits: <= 80 lines, cyclomatic complexity <= 20"
	(cd tools/funclimits && go test -count=1 ./...)
	step "proto contract: buf lint + generated code fresh"
	(cd tools/buf && go test -count=1 -timeout 10m ./...)
}

# Fuzz targets whose one execution costs milliseconds, against microseconds
# for the parsers, get a budget of their own so that the step stays within
# minutes and each target far inside go test's timeout: NAME=EXECUTIONS.
# FuzzOpenDamaged writes and opens a damaged bbolt file (about 6 ms);
# FuzzBoundedSize cuts events of several MiB (about 2 ms); FuzzMatch decodes
# whole blocks of lines, and minimising its large inputs can stall.
slow_fuzz="FuzzOpenDamaged=3000x FuzzBoundedSize=20000x FuzzMatch=20000x"
# Each input the fuzzer finds interesting is minimised first, for up to 60 s
# by default, with no execution counted meanwhile: FuzzBounded, which finds
# dozens to over a hundred in a run, once spent over 20 minutes there. A
# count bounds minimisation without taking executions from the run.
minimize=${FUZZMINIMIZE:-1000x}

fuzz() {
	step "fuzz targets, $fuzztime each (slow ones: $slow_fuzz)"
	# Every Fuzz* function in the product module, one run each.
	grep -rl --include='*_test.go' '^func Fuzz' . | grep -v '^./e2e/\|^./deploy/\|^./tools/' | sort | while read -r f; do
		pkg=./$(dirname "${f#./}")
		for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do
			budget=$fuzztime
			for s in $slow_fuzz; do
				[[ ${s%%=*} == "$fn" && -z ${FUZZTIME:-} ]] && budget=${s#*=}
			done
			echo "--- $pkg $fn ($budget)"
			go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$budget" -fuzzminimizetime="$minimize" "$pkg"
		done
	done
}

e2e() {
	step "e2e suite"
	e2e/run.sh
}

deploy() {
	step "deploy kit checks"
	deploy/check/run.sh
}

case $what in
all) unit; fuzz; e2e; deploy ;;
unit) unit ;;
fuzz) fuzz ;;
e2e) e2e ;;
deploy) deploy ;;
*) echo "usage: scripts/test.sh [all|unit|fuzz|e2e|deploy]" >&2; exit 2 ;;
esac
step "all requested checks passed"
