#!/usr/bin/env bash
# Lineage memory benchmark: the agent's peak RSS following a log live at
# LOAD_RATE audit lines/s [2000] with LOAD_WATCHES watched tokens [10000],
# LOAD_JTI_PERCENT of the lines carrying a JTI credential [60] and a 2m
# lookback, for LOAD_DURATION [150s: longer than the lookback, so the index
# reaches its steady size]. The aggregator and the log writer are
# TestLineageLoad (agent/internal/agent/load_test.go); the agent is the real
# binary. Prints the agent's peak VmRSS (sampled each second) and VmHWM, and
# its lineage metrics at the end. The target: VmHWM < 40 MiB.
# LOAD_LINEAGE_OFF=1: the same load to an aggregator without lineage (the
# agent's baseline).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$(mktemp -d "${TMPDIR:-/tmp}/tokenwatch-lineage-rss.XXXXXX")"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/agent" ./agent
go test -c -o "$work/load.test" ./agent/internal/agent

export TOKENWATCH_LINEAGE_LOAD="$work"
"$work/load.test" -test.run '^TestLineageLoad$' -test.v -test.timeout 0 >"$work/load.out" 2>&1 &
load=$!
pids+=("$load")
for _ in $(seq 100); do
	[ -s "$work/addr" ] && break
	sleep 0.1
done
[ -s "$work/addr" ] || { cat "$work/load.out" >&2; echo "the load aggregator did not start" >&2; exit 1; }
touch "$work/audit.log"

metrics="127.0.0.1:$((20000 + RANDOM % 20000))"
"$work/agent" --audit-log "$work/audit.log" --cluster bench --node-name bench-1 \
	--aggregator "$(cat "$work/addr")" --insecure --state-dir "$work/state" --start-at end \
	--metrics-addr "$metrics" --log-level warn 2>"$work/agent.err" &
agent=$!
pids+=("$agent")

peak=0
samples=0
while kill -0 "$load" 2>/dev/null; do
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent/status" 2>/dev/null || echo 0)
	[ "${rss:-0}" -gt "$peak" ] && peak=$rss
	samples=$((samples + 1))
	sleep 1
done
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
lineage=$(curl -fsS "http://$metrics/metrics" 2>/dev/null | grep -E '^tokenwatch_agent_(lineage_|lines_read_total|losses_total)' || true)
kill -TERM "$agent"
wait "$agent" || true
wait "$load" || { cat "$work/load.out" >&2; exit 1; }

grep '^load:' "$work/load.out" || true
echo "agent: peak VmRSS $((peak / 1024)) MiB over ${samples} samples, VmHWM $((hwm / 1024)) MiB (${hwm} kB)"
echo "$lineage"
if [ -s "$work/agent.err" ]; then
	echo "agent stderr:" && tail -5 "$work/agent.err"
fi
