package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/bench/internal/logfile"
	"github.com/tokenwatch/tokenwatch/bench/internal/otlpsink"
	"github.com/tokenwatch/tokenwatch/bench/internal/procmem"
	"github.com/tokenwatch/tokenwatch/internal/auditgen"
)

func genlog(_ context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("genlog", flag.ContinueOnError)
	size := fs.String("size", "1GiB", "size of the generated log")
	genuine := fs.String("genuine", "", "instead of generating, repeat this genuine audit log (plain or .gz) to -size")
	lineage := fs.Bool("lineage", false, "the lineage log: 60% of requests by 5,000 workloads with bound tokens")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *lineage {
		n, err := logfile.ParseSize(*size)
		if err != nil {
			return err
		}
		path, err := logfile.EnsureLineage(filepath.Join(cacheDir(), "logs"), 1, n)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, path)
		return nil
	}
	if *genuine != "" {
		n, err := logfile.ParseSize(*size)
		if err != nil {
			return err
		}
		src, err := readMaybeGzip(*genuine)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("genuine-%s-%s.log", strings.TrimSuffix(filepath.Base(*genuine), ".gz"), *size)
		path, err := logfile.EnsureRepeat(filepath.Join(cacheDir(), "logs"), name, src, n)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, path)
		return nil
	}
	path, err := resolveLog("", *size)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, path)
	return nil
}

func grepCmd(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("grep", flag.ContinueOnError)
	logPath := fs.String("log", "", "audit log (default: the cached generated log of -size)")
	size := fs.String("size", "1GiB", "size of the generated log when -log is not given")
	runs := fs.Int("runs", 3, "runs (median reported)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path, err := resolveLog(*logPath, *size)
	if err != nil {
		return err
	}
	g, err := grepBaseline(ctx, path, *runs)
	if err != nil {
		return err
	}
	fi, _ := os.Stat(path)
	fmt.Fprintf(out, "grep -cF: %v (%.0f MB/s), %d lines\n", g.Median.Round(time.Millisecond), mbps(fi.Size(), g.Median), g.Count)
	return nil
}

// once measures `agent --once` over a file into a fresh running aggregator
// per run, next to grep and, with -otelcol, the Collector baseline.
func once(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("once", flag.ContinueOnError)
	bin := fs.String("bin", "", "directory holding the agent and aggregator binaries (required)")
	logPath := fs.String("log", "", "audit log (default: the cached generated log of -size)")
	size := fs.String("size", "1GiB", "size of the generated log when -log is not given")
	runs := fs.Int("runs", 3, "runs of each contender (median reported)")
	otelcol := fs.String("otelcol", "", "Collector binary built from bench/collector (optional: adds the Collector baseline)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return fmt.Errorf("-bin is required")
	}
	path, err := resolveLog(*logPath, *size)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	g, err := grepBaseline(ctx, path, *runs)
	if err != nil {
		return err
	}
	var times []time.Duration
	var peak int64
	var cpu time.Duration
	var sent, records int64
	var missing int
	want, werr := logfile.Expected(path)
	for range *runs {
		r, err := onceRun(ctx, *bin, path, want)
		if err != nil {
			return err
		}
		times = append(times, r.elapsed)
		peak, cpu, sent, records, missing = max(peak, r.peak), r.cpu, r.sent, r.records, r.missing
	}
	agent := median(times)
	fmt.Fprintf(out, "File: %s of generated audit log (%.0f MB), warm in the page cache. Median of %d runs each.\n\n",
		filepath.Base(path), float64(fi.Size())/1e6, *runs)
	fmt.Fprintln(out, "| contender | time | throughput | vs grep | peak RSS | result |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|")
	fmt.Fprintf(out, "| baseline: `LC_ALL=C grep -cF '\"subresource\":\"token\"'` | %.2f s | %.0f MB/s | 1.00x | - | %d lines (not exact) |\n",
		g.Median.Seconds(), mbps(fi.Size(), g.Median), g.Count)
	exact := "expected alerts unknown (not a generated log)"
	if werr == nil {
		exact = fmt.Sprintf("%d of the %d expected token_request alerts arrived", len(want)-missing, len(want))
	}
	fmt.Fprintf(out, "| `agent --once` into a running aggregator (loopback, plaintext) | %.2f s | %.0f MB/s | **%.2fx** (target ≤ 3x) | %s | %d token creates sent; %s (%d OTLP records in all); agent CPU %.2f s |\n",
		agent.Seconds(), mbps(fi.Size(), agent), agent.Seconds()/g.Median.Seconds(), mib(peak), sent, exact, records, cpu.Seconds())
	if *otelcol != "" {
		c, err := collectorRun(ctx, *otelcol, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "| what users run today: OpenTelemetry Collector v0.159.0 filelog + json_parser + filter | %.2f s | %.0f MB/s | %.2fx | %s | %d lines read |\n",
			c.elapsed.Seconds(), mbps(fi.Size(), c.elapsed), c.elapsed.Seconds()/g.Median.Seconds(), mib(c.peak), c.lines)
	}
	return nil
}

// readMaybeGzip reads a file, decompressing it when its name ends in .gz.
func readMaybeGzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		r = zr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

type onceResult struct {
	elapsed time.Duration
	peak    int64
	cpu     time.Duration
	sent    int64
	records int64
	missing int // expected alerts that did not arrive
}

// onceRun runs agent --once over path into a fresh aggregator; want, when
// known, are the alerts that must arrive.
func onceRun(ctx context.Context, bin, path string, want []auditgen.Expected) (onceResult, error) {
	dir, err := os.MkdirTemp("", "twbench-once-")
	if err != nil {
		return onceResult{}, err
	}
	defer os.RemoveAll(dir)
	sink, err := otlpsink.Start("127.0.0.1:0")
	if err != nil {
		return onceResult{}, err
	}
	defer sink.Stop()
	agg, listen, err := startAggregator(ctx, bin, dir, sink.Addr())
	if err != nil {
		return onceResult{}, err
	}
	defer agg.stop()
	t0 := time.Now()
	a, err := start("agent", dir, filepath.Join(bin, "agent"), "--once", "--audit-log", path, "--cluster", "bench",
		"--node-name", "cp-1", "--aggregator", listen, "--insecure")
	if err != nil {
		return onceResult{}, err
	}
	if err := a.wait(ctx); err != nil {
		return onceResult{}, err
	}
	r := onceResult{elapsed: time.Since(t0)}
	r.peak, r.cpu = a.usage()
	r.sent = logField(a.log, "agent stopped", "events_sent")
	// Alerts are exported after the acknowledgement: wait for them.
	ids := make([]string, len(want))
	for i, w := range want {
		ids[i] = w.AuditID
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_ = sink.WaitIDs(wctx, ids)
	for _, id := range ids {
		if _, ok := sink.Arrival(id); !ok {
			r.missing++
		}
	}
	r.records = sink.Records()
	return r, nil
}

// logField returns the integer field key of the JSON log line whose msg is
// msg, or -1.
func logField(path, msg, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil || m["msg"] != msg {
			continue
		}
		if v, ok := m[key].(float64); ok {
			return int64(v)
		}
	}
	return -1
}

type collectorResult struct {
	elapsed time.Duration
	peak    int64
	lines   int64
}

// collectorConfig is the baseline's pipeline: the filelog receiver with the
// json_parser operator and the filter processor keeping the seed rule's
// token creates (exclusions left out, which only favours the baseline).
const collectorConfig = `receivers:
  filelog:
    include: [%q]
    start_at: beginning
    operators:
      - type: json_parser
processors:
  filter:
    error_mode: ignore
    log_conditions:
      - 'not (log.attributes["verb"] == "create" and log.attributes["objectRef"]["resource"] == "serviceaccounts" and log.attributes["objectRef"]["subresource"] == "token")'
exporters:
  file:
    path: %q
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: normal
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: %s
  pipelines:
    logs:
      receivers: [filelog]
      processors: [filter]
      exporters: [file]
`

func collector(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	otelcol := fs.String("otelcol", "", "Collector binary built from bench/collector (required)")
	logPath := fs.String("log", "", "audit log (default: the cached generated log of -size)")
	size := fs.String("size", "1GiB", "size of the generated log when -log is not given")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *otelcol == "" {
		return fmt.Errorf("-otelcol is required")
	}
	path, err := resolveLog(*logPath, *size)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	g, err := grepBaseline(ctx, path, 3)
	if err != nil {
		return err
	}
	c, err := collectorRun(ctx, *otelcol, path)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "| contender | time | throughput | vs grep | peak RSS |")
	fmt.Fprintln(out, "|---|---|---|---|---|")
	fmt.Fprintf(out, "| baseline: `LC_ALL=C grep -cF` | %.2f s | %.0f MB/s | 1.00x | - |\n", g.Median.Seconds(), mbps(fi.Size(), g.Median))
	fmt.Fprintf(out, "| OpenTelemetry Collector v0.159.0 filelog + json_parser + filter | %.2f s | %.0f MB/s | %.2fx | %s |\n",
		c.elapsed.Seconds(), mbps(fi.Size(), c.elapsed), c.elapsed.Seconds()/g.Median.Seconds(), mib(c.peak))
	return nil
}

// collectorRun runs the Collector over path until its receiver has accepted
// every line (its own metrics say so) and returns the time from start.
func collectorRun(ctx context.Context, bin, path string) (collectorResult, error) {
	lines, err := countLines(path)
	if err != nil {
		return collectorResult{}, err
	}
	if err := warm(path); err != nil {
		return collectorResult{}, err
	}
	dir, err := os.MkdirTemp("", "twbench-otelcol-")
	if err != nil {
		return collectorResult{}, err
	}
	defer os.RemoveAll(dir)
	maddr, err := freeAddr()
	if err != nil {
		return collectorResult{}, err
	}
	port := maddr[strings.LastIndexByte(maddr, ':')+1:]
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, collectorConfig, path, filepath.Join(dir, "out.jsonl"), port), 0o600); err != nil {
		return collectorResult{}, err
	}
	t0 := time.Now()
	p, err := start("otelcol", dir, bin, "--config", cfg)
	if err != nil {
		return collectorResult{}, err
	}
	defer p.stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	var peak int64
	for {
		n, err := acceptedLogRecords(ctx, maddr)
		if m, merr := procmem.Read(p.cmd.Process.Pid); merr == nil {
			peak = max(peak, m.HWM)
		}
		if err == nil && n >= lines {
			return collectorResult{elapsed: time.Since(t0), peak: peak, lines: n}, nil
		}
		select {
		case <-p.done:
			return collectorResult{}, fmt.Errorf("collector exited: %v\n%s", p.err, p.tail())
		case <-ctx.Done():
			return collectorResult{}, fmt.Errorf("collector read %d of %d lines: %w", n, lines, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
