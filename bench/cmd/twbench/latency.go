package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/bench/internal/otlpsink"
	"github.com/tokenwatch/tokenwatch/internal/auditgen"
)

// alertLine is a token create by a non-system user: it must alert.
func alertLine(id string, sa int, now time.Time) []byte {
	ts := now.UTC().Format("2006-01-02T15:04:05.000000Z")
	return fmt.Appendf(nil, `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":%q,"stage":"ResponseComplete",`+
		`"requestURI":"/api/v1/namespaces/team-a/serviceaccounts/sa-%d/token","verb":"create",`+
		`"user":{"username":"bench-attacker","groups":["system:authenticated"]},"sourceIPs":["10.0.0.9"],"userAgent":"kubectl/v1.35.4",`+
		`"objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"sa-%d","apiVersion":"v1","subresource":"token"},`+
		`"responseStatus":{"metadata":{},"code":201},"requestReceivedTimestamp":%q,"stageTimestamp":%q,`+
		`"annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}`+"\n", id, sa, sa, ts, ts)
}

func latency(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("latency", flag.ContinueOnError)
	bin := fs.String("bin", "", "directory holding the agent and aggregator binaries (required)")
	rates := fs.String("rates", "1000,20000", "audit lines per second, comma separated")
	dur := fs.Duration("duration", 20*time.Second, "how long each rate is written")
	every := fs.Int("alert-every", 100, "one alerting token create every this many lines")
	otelcol := fs.String("otelcol", "", "Collector binary built from bench/collector (optional: adds the Collector's filelog path as a baseline)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("-bin is required")
	}
	var routine [][]byte
	var buf bytes.Buffer
	cfg := auditgen.Config{Seed: 2, Lines: 50000, TokenRate: 0.005, Step: time.Millisecond, Pad: 1100}
	if _, _, err := auditgen.Generate(&buf, cfg); err != nil {
		return err
	}
	for l := range bytes.Lines(buf.Bytes()) {
		routine = append(routine, l)
	}
	fmt.Fprintf(out, "Each rate for %v: a paced writer appends ~1.1 KB lines to the live file every 5 ms; one line in %d is a token create that must alert; latency is from just before the write(2) that appends it to the arrival of its OTLP record at an OTLP/gRPC receiver in the harness (agent -> aggregator -> outbox -> OTLP export, loopback, plaintext).\n\n", *dur, *every)
	if *otelcol != "" {
		fmt.Fprintf(out, "Baseline measured in the same run: the Collector (v0.159.0) tailing the same kind of live file with filelog (default 200 ms poll) + json_parser + filter (token creates) + OTLP/gRPC exporter to the same receiver; its record carries the event's own auditID.\n\n")
	}
	fmt.Fprintln(out, "| rate (lines/s) | pipeline | alerts measured | p50 | p99 | max | missing | baseline: seed rule every 5 min (p50 / p99 / max) |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|")
	for _, f := range strings.Split(*rates, ",") {
		rate, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || rate <= 0 {
			return fmt.Errorf("-rates %q: want positive integers", *rates)
		}
		pipes := []string{"tokenwatch"}
		if *otelcol != "" {
			pipes = append(pipes, "collector")
		}
		for _, pipe := range pipes {
			r, err := latencyRun(ctx, *bin, *otelcol, pipe, rate, *dur, *every, routine)
			if err != nil {
				return err
			}
			name := "tokenwatch: agent → aggregator → OTLP"
			if pipe == "collector" {
				name = "baseline: Collector filelog → json_parser → filter → OTLP"
			}
			fmt.Fprintf(out, "| %d | %s | %d | %s | %s | %s | %d | 150 s / 297 s / 300 s (+ SIEM ingest delay) |\n",
				rate, name, len(r.lat), ms(pct(r.lat, 50)), ms(pct(r.lat, 99)), ms(slices.Max(r.lat)), r.missing)
		}
	}
	return nil
}

type latencyResult struct {
	lat     []time.Duration
	missing int
}

// latencyCollector is the Collector's pipeline of the latency baseline.
const latencyCollector = `receivers:
  filelog:
    include: [%q]
    start_at: end
    operators:
      - type: json_parser
processors:
  filter:
    error_mode: ignore
    log_conditions:
      - 'not (log.attributes["verb"] == "create" and log.attributes["objectRef"]["resource"] == "serviceaccounts" and log.attributes["objectRef"]["subresource"] == "token")'
exporters:
  otlp:
    endpoint: %q
    tls:
      insecure: true
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [filelog]
      processors: [filter]
      exporters: [otlp]
`

// latencyRun measures one rate through pipe: "tokenwatch" (agent and
// aggregator from bin) or "collector" (the otelcol binary).
func latencyRun(ctx context.Context, bin, otelcol, pipe string, rate int, dur time.Duration, every int, routine [][]byte) (latencyResult, error) {
	dir, err := os.MkdirTemp("", "twbench-latency-")
	if err != nil {
		return latencyResult{}, err
	}
	defer os.RemoveAll(dir)
	live := filepath.Join(dir, "log", "audit.log")
	if err := os.MkdirAll(filepath.Dir(live), 0o755); err != nil {
		return latencyResult{}, err
	}
	f, err := os.OpenFile(live, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return latencyResult{}, err
	}
	defer f.Close()
	sink, err := otlpsink.Start("127.0.0.1:0")
	if err != nil {
		return latencyResult{}, err
	}
	defer sink.Stop()
	agent, agg, err := startLatencyPipe(ctx, bin, otelcol, pipe, dir, live, sink.Addr())
	if err != nil {
		return latencyResult{}, err
	}
	defer agg.stop()
	defer agent.stop()
	if err := latencyWarmUp(ctx, f, sink, rate, agent, agg); err != nil {
		return latencyResult{}, err
	}
	sent, ids, err := latencyLoad(ctx, f, live, rate, dur, every, routine)
	if err != nil {
		return latencyResult{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	_ = sink.WaitIDs(wctx, ids)
	cancel()
	var r latencyResult
	for _, id := range ids {
		at, ok := sink.Arrival(id)
		if !ok {
			r.missing++
			continue
		}
		r.lat = append(r.lat, at.Sub(sent[id]))
	}
	if len(r.lat) == 0 {
		return r, fmt.Errorf("no alert arrived of %d\n%s: %s\n%s", len(ids), agent.name, agent.tail(), agg.tail())
	}
	slices.Sort(r.lat)
	return r, nil
}

// startLatencyPipe starts what carries the live file's lines to the sink:
// the Collector alone (pipe "collector"; agent and agg are then the same
// process), or the aggregator and an agent that is ready.
func startLatencyPipe(ctx context.Context, bin, otelcol, pipe, dir, live, sinkAddr string) (agent, agg *proc, err error) {
	if pipe == "collector" {
		cfg := filepath.Join(dir, "otelcol.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, latencyCollector, live, sinkAddr), 0o600); err != nil {
			return nil, nil, err
		}
		if agent, err = start("otelcol", dir, otelcol, "--config", cfg); err != nil {
			return nil, nil, err
		}
		return agent, agent, nil
	}
	agg, listen, err := startAggregator(ctx, bin, dir, sinkAddr)
	if err != nil {
		return nil, nil, err
	}
	maddr, err := freeAddr()
	if err != nil {
		agg.stop()
		return nil, nil, err
	}
	agent, err = start("agent", dir, filepath.Join(bin, "agent"), "--audit-log", live, "--cluster", "bench",
		"--node-name", "cp-1", "--aggregator", listen, "--insecure", "--state-dir", filepath.Join(dir, "agent-state"),
		"--start-at", "end", "--metrics-addr", maddr, "--log-level", "warn")
	if err != nil {
		agg.stop()
		return nil, nil, err
	}
	if err := waitReady(ctx, agent, maddr); err != nil {
		agent.stop()
		agg.stop()
		return nil, nil, err
	}
	return agent, agg, nil
}

// latencyWarmUp waits for one alert end to end before measuring: the
// follower is at the end of the file and every connection is up. The
// Collector notices the file only at its first poll after start: it
// re-sends the warm-up line until one arrives.
func latencyWarmUp(ctx context.Context, f *os.File, sink *otlpsink.Sink, rate int, agent, agg *proc) error {
	for i := range 60 {
		warmID := fmt.Sprintf("warm-%d-%d", rate, i)
		if _, err := f.Write(alertLine(warmID, 0, time.Now())); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		err := sink.WaitIDs(wctx, []string{warmID})
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("no warm-up line arrived in 60 s\n%s: %s\n%s", agent.name, agent.tail(), agg.tail())
}

// latencyLoad appends rate lines a second to f for dur, every every-th an
// alerting one, and returns when each alerting line was written.
func latencyLoad(ctx context.Context, f *os.File, live string, rate int, dur time.Duration, every int, routine [][]byte) (map[string]time.Time, []string, error) {
	sent := map[string]time.Time{}
	var ids []string
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	written := 0
	var chunk bytes.Buffer
	for {
		now := time.Now()
		el := now.Sub(start)
		if el >= dur {
			return sent, ids, nil
		}
		due := int(float64(rate)*el.Seconds()) - written
		chunk.Reset()
		var chunkIDs []string
		for k := written; k < written+due; k++ {
			if k%every == every-1 {
				id := fmt.Sprintf("lat-%d-%d", rate, k)
				chunk.Write(alertLine(id, k%50, now))
				chunkIDs = append(chunkIDs, id)
			} else {
				chunk.Write(routine[k%len(routine)])
			}
		}
		written += due
		if chunk.Len() > 0 {
			t := time.Now()
			if _, err := f.Write(chunk.Bytes()); err != nil {
				return nil, nil, fmt.Errorf("append to %s: %w", live, err)
			}
			for _, id := range chunkIDs {
				sent[id] = t
				ids = append(ids, id)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// pct returns the p-th percentile (nearest rank) of sorted ds.
func pct(ds []time.Duration, p int) time.Duration {
	i := (len(ds)*p + 99) / 100
	return ds[max(0, min(len(ds)-1, i-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
