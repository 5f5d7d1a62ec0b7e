#!/usr/bin/env bash
# tokenwatch benchmarks: one command per figure, each measured next to its
# baseline in the same run on the same data; results are printed and
# appended to docs/BENCHMARKS.md with the machine and the date.
#
#   bench/run.sh scan|lineage|once|collector|latency|ingest|rss|profile|all
#
# Environment (defaults in brackets):
#   TOKENWATCH_CACHE   cache of generated logs and the Collector [~/.cache/tokenwatch]
#   BENCH_SIZE         log size of once, collector and rss [1GiB]
#   SCAN_SIZE          log size of the scan and lineage Go benchmarks [256MiB]
#   RUNS               runs per contender, median reported [3]
#   LATENCY_RATES      audit lines/s [1000,20000]
#   LATENCY_DURATION   per rate [20s]
#   LATENCY_USES       token_use figure: uses of watched tokens/s, 0 skips [100]
#   LATENCY_FLOOD      flood figure: uses/s of one watched token, 0 skips [5000]
#   INGEST_STREAMS     [1,100,1000]    INGEST_DURATION per load [10s]
#   BENCH_NO_RECORD=1  print only, do not append to docs/BENCHMARKS.md
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${1:-}"
case "$target" in
scan | lineage | once | collector | latency | ingest | rss | profile | all) ;;
*)
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac

export TOKENWATCH_CACHE="${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}"
BENCH_SIZE="${BENCH_SIZE:-1GiB}"
SCAN_SIZE="${SCAN_SIZE:-256MiB}"
RUNS="${RUNS:-3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tokenwatch-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
bin="$work/bin"
mkdir -p "$bin"

# The commit the binaries are built from; "+dirty" when the tree differs.
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no -- . ':!docs' 2>/dev/null)" ]]; then
	commit="$commit+dirty"
fi
echo "run.sh: building agent, aggregator and twbench at $commit" >&2
go build -o "$bin/" ./agent ./aggregator ./bench/cmd/twbench
tw="$bin/twbench"

machine() {
	local cpu mem
	cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
	mem="$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "$(nproc) CPUs ($cpu), $mem RAM, $(go version | cut -d' ' -f3-), commit $commit"
}

# record TITLE COMMAND FILE: print FILE and append it to docs/BENCHMARKS.md.
record() {
	local title="$1" cmd="$2" file="$3"
	{
		echo
		echo "### $title — $(date -u '+%Y-%m-%d %H:%M UTC')"
		echo
		echo "Command: \`$cmd\`. Machine: $(machine)."
		echo
		cat "$file"
	} >"$work/section.md"
	cat "$work/section.md"
	if [[ "${BENCH_NO_RECORD:-}" != 1 ]]; then
		mkdir -p docs
		cat "$work/section.md" >>docs/BENCHMARKS.md
	fi
}

overlay() { # overlay FILE-IN-PACKAGE SOURCE: writes an overlay JSON, prints its path
	echo "{\"Replace\":{\"$root/$1\":\"$root/$2\"}}" >"$work/overlay-$(basename "$1").json"
	echo "$work/overlay-$(basename "$1").json"
}

collector_bin() { bench/collector/build.sh; }

# scan_table LOG LABEL: the scan Go benchmark over LOG as a Markdown table.
scan_table() {
	local log="$1" label="$2"
	TOKENWATCH_BENCH_LOG="$log" go test ./bench/scan -run '^$' -bench '^BenchmarkScan$' \
		-benchtime 5x -count "$RUNS" | tee "$work/scan.txt" >&2
	echo "$label: $(basename "$log") ($(du -m "$log" | cut -f1) MiB), warm; median of $RUNS counts of 5 iterations each."
	echo
	awk '
		/^BenchmarkScan\// {
			name=$1; sub(/^BenchmarkScan\//, "", name); sub(/-[0-9]+$/, "", name)
			v[name]=v[name] " " $3; mb[name]=mb[name] " " $5
			for (i = 6; i < NF; i++) if ($(i+1) ~ /\/op$/) extra[name]=$i " " $(i+1)
		}
		function med(s,   a, n, i, j, t) {
			n = split(s, a, " ")
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
			return a[int((n + 1) / 2)]
		}
		END {
			g = med(v["baseline-grep"])
			print "| contender | time/op | throughput | vs grep | result |"
			print "|---|---|---|---|---|"
			printf "| baseline: `LC_ALL=C grep -cF '\''\"subresource\":\"token\"'\''` (process, warm file) | %.1f ms | %s MB/s | 1.00x | %s (not exact) |\n", g / 1e6, med(mb["baseline-grep"]), extra["baseline-grep"]
			printf "| floor: read(2) of the file in 1 MiB blocks, nothing else | %.1f ms | %s MB/s | %.2fx | - |\n", med(v["read"]) / 1e6, med(mb["read"]), med(v["read"]) / g
			printf "| agent path: follow + prefilter + decode | %.1f ms | %s MB/s | **%.2fx** (target ≤ 1.5x, goal 1x) | %s (exact, checked against a full decode) |\n", med(v["agent"]) / 1e6, med(mb["agent"]), med(v["agent"]) / g, extra["agent"]
		}' "$work/scan.txt"
}

run_scan() {
	local gen genuine
	gen="$("$tw" genlog -size "$SCAN_SIZE")"
	genuine="$("$tw" genlog -size "$SCAN_SIZE" -genuine internal/prefilter/testdata/kube-apiserver-v1.35.4-audit.log.gz)"
	{
		scan_table "$gen" "Generated log (auditgen: ~1.1 KB lines, 0.5% token creates, attacks and decoys)"
		echo
		scan_table "$genuine" "Genuine kube-apiserver v1.35.4 audit log (internal/prefilter/testdata), repeated to size"
	} >"$work/scan.md"
	record "Agent scan (a): read + pre-filter + decode vs grep" "bench/run.sh scan" "$work/scan.md"
}

# lineage_table LOG LABEL: the lineage scan Go benchmark over LOG as a
# Markdown table.
lineage_table() {
	local log="$1" label="$2"
	TOKENWATCH_BENCH_LOG="$log" go test ./bench/scan -run '^$' -bench '^BenchmarkLineageScan$' \
		-benchtime 5x -count "$RUNS" | tee "$work/lineage.txt" >&2
	echo "$label: $(basename "$log") ($(du -m "$log" | cut -f1) MiB), warm; median of $RUNS counts of 5 iterations each."
	echo "CPU is user + system time (grep's from its process, the others' from the benchmark process)."
	echo
	awk '
		/^BenchmarkLineageScan\// {
			name=$1; sub(/^BenchmarkLineageScan\//, "", name); sub(/-[0-9]+$/, "", name)
			v[name]=v[name] " " $3; mb[name]=mb[name] " " $5
			for (i = 3; i < NF; i++) if ($(i+1) == "cpu-vs-grep") paired[name]=paired[name] " " $i
			for (i = 6; i < NF; i++) {
				if ($(i+1) == "cpu-ns/op") cpu[name]=cpu[name] " " $i
				else if ($(i+1) ~ /\/op$/) extra[name]=$i " " $(i+1)
			}
		}
		function med(s,   a, n, i, j, t) {
			n = split(s, a, " ")
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
			return a[int((n + 1) / 2)]
		}
		function row(name, label, target) {
			printf "| %s | %.1f ms | %s MB/s | **%.2fx**%s | %.0f ms, %.2fx | %s |\n", label, med(v[name]) / 1e6, med(mb[name]), med(v[name]) / g, target, med(cpu[name]) / 1e6, med(cpu[name]) / gc, extra[name]
		}
		END {
			g = med(v["baseline-grep"]); gc = med(cpu["baseline-grep"])
			print "| contender | time/op | throughput | vs grep | CPU/op, vs grep | result |"
			print "|---|---|---|---|---|---|"
			printf "| baseline: `LC_ALL=C grep -cF '\''\"subresource\":\"token\"'\''` (process, warm file) | %.1f ms | %s MB/s | 1.00x | %.0f ms, 1.00x | %s (not exact) |\n", g / 1e6, med(mb["baseline-grep"]), gc / 1e6, extra["baseline-grep"]
			row("agent", "agent path without lineage: follow + prefilter + decode", "")
			row("idle", "(a) + linematch Block, no watch, and the lookback index (one entry per block)", " (target ≤ 1.0x)")
			row("watched", "(b) + Block and the index, 10,000 watched tokens and 1,000 followed minters", " (target ≤ 1.2x on the lineage log)")
			if (paired["watched-paired"] != "")
				printf "| (b) again, each iteration next to a grep run: median of the CPU ratios | - | - | - | %.2fx | - |\n", med(paired["watched-paired"])
		}' "$work/lineage.txt"
}

run_lineage() {
	local gen genuine lin
	gen="$("$tw" genlog -size "$SCAN_SIZE")"
	genuine="$("$tw" genlog -size "$SCAN_SIZE" -genuine internal/prefilter/testdata/kube-apiserver-v1.35.4-audit.log.gz)"
	lin="$("$tw" genlog -size "$SCAN_SIZE" -lineage)"
	{
		lineage_table "$gen" "Generated log (auditgen: ~1.1 KB lines, 0.5% token creates, no JTI credentials)"
		echo
		lineage_table "$genuine" "Genuine kube-apiserver v1.35.4 audit log (internal/prefilter/testdata), repeated to size"
		echo
		lineage_table "$lin" "Lineage log (auditgen: as generated, 60% of requests by 5,000 workloads with bound tokens)"
	} >"$work/lineage.md"
	record "Lineage scan: read + pre-filter + lineage matcher vs grep" "bench/run.sh lineage" "$work/lineage.md"
}

run_once() {
	local log
	log="$("$tw" genlog -size "$BENCH_SIZE")"
	"$tw" once -bin "$bin" -log "$log" -runs "$RUNS" -otelcol "$(collector_bin)" >"$work/once.md"
	record "Agent scan (b): whole agent --once into a running aggregator vs grep and the Collector" "bench/run.sh once" "$work/once.md"
}

run_collector() {
	local log
	log="$("$tw" genlog -size "$BENCH_SIZE")"
	"$tw" collector -otelcol "$(collector_bin)" -log "$log" >"$work/collector.md"
	record "What users run today: OpenTelemetry Collector filelog + json_parser + filter vs grep" "bench/run.sh collector" "$work/collector.md"
}

run_latency() {
	"$tw" latency -bin "$bin" -otelcol "$(collector_bin)" -rates "${LATENCY_RATES:-1000,20000}" \
		-duration "${LATENCY_DURATION:-20s}" -uses "${LATENCY_USES:-100}" -flood "${LATENCY_FLOOD:-5000}" >"$work/latency.md"
	record "End-to-end latency: line appended to OTLP record received" "bench/run.sh latency" "$work/latency.md"
}

run_ingest() {
	"$tw" ingest -bin "$bin" -streams "${INGEST_STREAMS:-1,100,1000}" -duration "${INGEST_DURATION:-10s}" >"$work/ingest.md"
	record "Aggregator ingest over gRPC vs an ack-only server" "bench/run.sh ingest" "$work/ingest.md"
}

run_rss() {
	local log
	log="$("$tw" genlog -size "$BENCH_SIZE")"
	"$tw" rss -bin "$bin" -log "$log" -otelcol "$(collector_bin)" >"$work/rss.md"
	record "Agent resident memory, idle and at full scan" "bench/run.sh rss" "$work/rss.md"
}

# profile: CPU profiles of what misses a target, top functions printed.
# The aggregator is built with bench/profile/pprof.go.in overlaid (pprof on
# $TWBENCH_PPROF); the scan profile comes from the Go benchmark.
run_profile() {
	local ov log out="${PROFILE_DIR:-$work/profiles}"
	mkdir -p "$out"
	ov="$(overlay aggregator/zz_pprof.go bench/profile/pprof.go.in)"
	go build -overlay "$ov" -o "$bin/prof/" ./aggregator
	cp "$bin/aggregator" "$bin/prof/aggregator.plain" 2>/dev/null || true
	TWBENCH_PPROF="127.0.0.1:$((20000 + RANDOM % 20000))" "$tw" ingest -bin "$bin/prof" -transports plaintext \
		-streams "${INGEST_STREAMS:-100,1000}" -duration "${INGEST_DURATION:-10s}" -cpuprofile "$out/aggregator" >"$work/prof-ingest.md"
	log="$("$tw" genlog -size "$SCAN_SIZE")"
	TOKENWATCH_BENCH_SKIP_EXACT=1 TOKENWATCH_BENCH_LOG="$log" go test ./bench/scan -run '^$' -bench '^BenchmarkScan$/agent' \
		-benchtime 5x -cpuprofile "$out/scan.pprof" -o "$bin/scan.test" >&2
	{
		echo "Profiles in $out (kept only with PROFILE_DIR set)."
		for p in "$out"/*.pprof; do
			echo
			echo "#### $(basename "$p")"
			echo
			echo '```'
			go tool pprof -top -nodecount=20 "$( [[ $p == *scan.pprof ]] && echo "$bin/scan.test")" "$p" 2>/dev/null | sed -n '1,28p'
			echo '```'
		done
	} >"$work/profile.md"
	BENCH_NO_RECORD=1 record "CPU profiles" "bench/run.sh profile" "$work/profile.md"
}

if [[ "$target" == all ]]; then
	for t in scan lineage once latency ingest rss; do "run_$t"; done
else
	"run_$target"
fi
