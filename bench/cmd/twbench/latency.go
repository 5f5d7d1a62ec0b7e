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
	uses := fs.Int("uses", 100, "uses of watched tokens a second for the token_use figure (0: skip it)")
	flood := fs.Int("flood", 5000, "uses of one watched token a second for the flood figure (0: skip it)")
	lineageOnly := fs.Bool("lineage-only", false, "measure only the lineage figures (token_use, flood)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("-bin is required")
	}
	if *uses < 0 || *flood < 0 || *every <= 0 {
		return fmt.Errorf("-uses, -flood: want >= 0; -alert-every: want > 0")
	}
	var rateList []int
	for _, f := range strings.Split(*rates, ",") {
		rate, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || rate <= 0 {
			return fmt.Errorf("-rates %q: want positive integers", *rates)
		}
		rateList = append(rateList, rate)
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
	fmt.Fprintf(out, "Each rate for %v: a paced writer appends ~1.1 KB lines to the live file every 5 ms; one line in %d is a token create that must alert; latency is from just before the write(2) that appends it to the arrival of its OTLP record at an OTLP/gRPC receiver in the harness (agent -> aggregator -> outbox -> OTLP export, loopback, plaintext).\n", *dur, *every)
	if !*lineageOnly {
		if err := latencyTable(ctx, out, *bin, *otelcol, rateList, *dur, *every, routine); err != nil {
			return err
		}
	}
	return lineageLatency(ctx, out, *bin, rateList, *uses, *flood, *dur, *every, routine)
}

// latencyTable prints the token-request latency of tokenwatch and of the
// Collector (with otelcol) at each rate.
func latencyTable(ctx context.Context, out io.Writer, bin, otelcol string, rates []int, dur time.Duration, every int, routine [][]byte) error {
	fmt.Fprintln(out)
	if otelcol != "" {
		fmt.Fprintf(out, "Baseline measured in the same run: the Collector (v0.159.0) tailing the same kind of live file with filelog (default 200 ms poll) + json_parser + filter (token creates) + OTLP/gRPC exporter to the same receiver; its record carries the event's own auditID.\n\n")
	}
	fmt.Fprintln(out, "| rate (lines/s) | pipeline | alerts measured | p50 | p99 | max | missing | baseline: seed rule every 5 min (p50 / p99 / max) |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|")
	for _, rate := range rates {
		pipes := []string{"tokenwatch"}
		if otelcol != "" {
			pipes = append(pipes, "collector")
		}
		for _, pipe := range pipes {
			r, err := latencyRun(ctx, bin, otelcol, pipe, rate, dur, every, routine)
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
	env, err := openLatencyEnv(ctx, bin, otelcol, pipe, rate)
	if err != nil {
		return latencyResult{}, err
	}
	defer env.close()
	sent, ids, err := latencyLoad(ctx, env.f, env.live, rate, dur, every, routine, nil)
	if err != nil {
		return latencyResult{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	_ = env.sink.WaitIDs(wctx, ids)
	cancel()
	r := env.collect(ids, sent, "")
	if len(r.lat) == 0 {
		return r, fmt.Errorf("no alert arrived of %d\n%s", len(ids), env.tails())
	}
	return r, nil
}

// latencyEnv is one measured pipeline: the live file, the OTLP sink and
// the processes between them, warmed up.
type latencyEnv struct {
	dir, live  string
	metrics    string // the agent's metrics address ("" for the Collector)
	f          *os.File
	sink       *otlpsink.Sink
	agent, agg *proc
}

// openLatencyEnv starts pipe between a new live file and a new sink and
// waits for one alert end to end. Close it when done.
func openLatencyEnv(ctx context.Context, bin, otelcol, pipe string, rate int) (_ *latencyEnv, err error) {
	e := &latencyEnv{}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "twbench-latency-"); err != nil {
		return nil, err
	}
	e.live = filepath.Join(e.dir, "log", "audit.log")
	if err = os.MkdirAll(filepath.Dir(e.live), 0o755); err != nil {
		return nil, err
	}
	if e.f, err = os.OpenFile(e.live, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
		return nil, err
	}
	if e.sink, err = otlpsink.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	if e.agent, e.agg, e.metrics, err = startLatencyPipe(ctx, bin, otelcol, pipe, e.dir, e.live, e.sink.Addr()); err != nil {
		return nil, err
	}
	if err = latencyWarmUp(ctx, e.f, e.sink, rate, e.agent, e.agg); err != nil {
		return nil, err
	}
	return e, nil
}

// close stops the agent, then the aggregator and the sink, and removes
// the directory. It is safe on a partly opened env.
func (e *latencyEnv) close() {
	if e.agent != nil {
		e.agent.stop()
	}
	if e.agg != nil && e.agg != e.agent {
		e.agg.stop()
	}
	if e.sink != nil {
		_ = e.sink.Stop()
	}
	if e.f != nil {
		e.f.Close()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

func (e *latencyEnv) tails() string {
	return fmt.Sprintf("%s: %s\n%s", e.agent.name, e.agent.tail(), e.agg.tail())
}

// collect returns the sorted latencies of ids (arrival - sent), counting
// those that did not arrive. With eventName set, only a record of that
// EventName counts as the arrival.
func (e *latencyEnv) collect(ids []string, sent map[string]time.Time, eventName string) latencyResult {
	var r latencyResult
	for _, id := range ids {
		at, ok := e.sink.Arrival(id)
		if eventName != "" {
			at, ok = e.sink.ArrivalOf(eventName, id)
		}
		if !ok {
			r.missing++
			continue
		}
		r.lat = append(r.lat, at.Sub(sent[id]))
	}
	slices.Sort(r.lat)
	return r
}

// startLatencyPipe starts what carries the live file's lines to the sink:
// the Collector alone (pipe "collector"; agent and agg are then the same
// process), or the aggregator and an agent that is ready, with the
// agent's metrics address.
func startLatencyPipe(ctx context.Context, bin, otelcol, pipe, dir, live, sinkAddr string) (agent, agg *proc, metrics string, err error) {
	if pipe == "collector" {
		cfg := filepath.Join(dir, "otelcol.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, latencyCollector, live, sinkAddr), 0o600); err != nil {
			return nil, nil, "", err
		}
		if agent, err = start("otelcol", dir, otelcol, "--config", cfg); err != nil {
			return nil, nil, "", err
		}
		return agent, agent, "", nil
	}
	agg, listen, err := startAggregator(ctx, bin, dir, sinkAddr)
	if err != nil {
		return nil, nil, "", err
	}
	maddr, err := freeAddr()
	if err != nil {
		agg.stop()
		return nil, nil, "", err
	}
	agent, err = start("agent", dir, filepath.Join(bin, "agent"), "--audit-log", live, "--cluster", "bench",
		"--node-name", "cp-1", "--aggregator", listen, "--insecure", "--state-dir", filepath.Join(dir, "agent-state"),
		"--start-at", "end", "--metrics-addr", maddr, "--log-level", "warn")
	if err != nil {
		agg.stop()
		return nil, nil, "", err
	}
	if err := waitReady(ctx, agent, maddr); err != nil {
		agent.stop()
		agg.stop()
		return nil, nil, "", err
	}
	return agent, agg, maddr, nil
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

// loadMix adds lines to the paced writer's chunks besides the routine
// lines and the alerting token creates.
type loadMix interface {
	// add appends the lines due el after the start (timestamped now) to
	// chunk and returns the IDs of those to time.
	add(chunk *bytes.Buffer, el time.Duration, now time.Time) []string
	// phase names the phase at el; the alerts' IDs carry it.
	phase(el time.Duration) string
}

// latencyLoad appends rate lines a second to f for dur, every every-th an
// alerting one, and the lines of mix (when not nil); it returns when each
// line to time was written, and the IDs of the alerts ("lat-<phase>-<rate>-<n>"
// with a phase) and of mix's lines, in the order written.
func latencyLoad(ctx context.Context, f *os.File, live string, rate int, dur time.Duration, every int, routine [][]byte, mix loadMix) (map[string]time.Time, []string, error) {
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
		prefix := "lat-"
		if mix != nil {
			if p := mix.phase(el); p != "" {
				prefix += p + "-"
			}
		}
		for k := written; k < written+due; k++ {
			if k%every == every-1 {
				id := fmt.Sprintf("%s%d-%d", prefix, rate, k)
				chunk.Write(alertLine(id, k%50, now))
				chunkIDs = append(chunkIDs, id)
			} else {
				chunk.Write(routine[k%len(routine)])
			}
		}
		written += due
		if mix != nil {
			chunkIDs = append(chunkIDs, mix.add(&chunk, el, now)...)
		}
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
