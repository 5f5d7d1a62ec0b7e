package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/tokenwatch/tokenwatch/bench/internal/logfile"
	"github.com/tokenwatch/tokenwatch/bench/internal/otlpsink"
	"github.com/tokenwatch/tokenwatch/bench/internal/procmem"
)

// rss measures the agent's resident memory idle (following a live file
// that does not grow) and over a full scan (--once over the big log), next
// to grep's and, with -otelcol, the Collector's on the same scan.
func rss(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("rss", flag.ContinueOnError)
	bin := fs.String("bin", "", "directory holding the agent and aggregator binaries (required)")
	logPath := fs.String("log", "", "audit log of the full scan (default: the cached generated log of -size)")
	size := fs.String("size", "1GiB", "size of the generated log when -log is not given")
	otelcol := fs.String("otelcol", "", "Collector binary built from bench/collector (optional)")
	settle := fs.Duration("settle", 5*time.Second, "how long the idle agent runs before it is measured")
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
	idle, err := idleRun(ctx, *bin, *settle)
	if err != nil {
		return err
	}
	scan, err := onceRun(ctx, *bin, path, nil)
	if err != nil {
		return err
	}
	g, err := grepBaseline(ctx, path, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Idle: the agent follows a 10 MiB live file from its end, connected to an aggregator, measured after %v (VmRSS now / VmHWM peak). Full scan: `agent --once` over %s (peak RSS from getrusage, = VmHWM).\n\n", *settle, filepath.Base(path))
	fmt.Fprintln(out, "| process | idle RSS (now / peak) | full-scan peak RSS | target |")
	fmt.Fprintln(out, "|---|---|---|---|")
	fmt.Fprintf(out, "| baseline: `grep -cF` over the same file | - | %s | - |\n", mib(g.Peak))
	fmt.Fprintf(out, "| agent | %s / %s | %s | < 40 MiB |\n", mib(idle.RSS), mib(idle.HWM), mib(scan.peak))
	if *otelcol != "" {
		c, err := collectorRun(ctx, *otelcol, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "| what users run today: Collector filelog + json_parser + filter | - | %s (sampled VmHWM) | - |\n", mib(c.peak))
	}
	return nil
}

func idleRun(ctx context.Context, bin string, settle time.Duration) (procmem.Mem, error) {
	dir, err := os.MkdirTemp("", "twbench-rss-")
	if err != nil {
		return procmem.Mem{}, err
	}
	defer os.RemoveAll(dir)
	live, err := logfile.Ensure(filepath.Join(dir, "log"), 4, 10<<20)
	if err != nil {
		return procmem.Mem{}, err
	}
	sink, err := otlpsink.Start("127.0.0.1:0")
	if err != nil {
		return procmem.Mem{}, err
	}
	defer sink.Stop()
	agg, listen, err := startAggregator(ctx, bin, dir, sink.Addr())
	if err != nil {
		return procmem.Mem{}, err
	}
	defer agg.stop()
	maddr, err := freeAddr()
	if err != nil {
		return procmem.Mem{}, err
	}
	a, err := start("agent", dir, filepath.Join(bin, "agent"), "--audit-log", live, "--cluster", "bench",
		"--node-name", "cp-1", "--aggregator", listen, "--insecure", "--state-dir", filepath.Join(dir, "agent-state"),
		"--start-at", "end", "--metrics-addr", maddr, "--log-level", "warn")
	if err != nil {
		return procmem.Mem{}, err
	}
	defer a.stop()
	if err := waitReady(ctx, a, maddr); err != nil {
		return procmem.Mem{}, err
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return procmem.Mem{}, ctx.Err()
	}
	return procmem.Read(a.cmd.Process.Pid)
}
