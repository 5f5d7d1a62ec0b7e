// Command twbench runs tokenwatch's benchmarks that need whole processes:
// the agent's --once scan into a running aggregator, the OpenTelemetry
// Collector baseline, end-to-end latency, aggregator ingest and agent
// memory, each side by side with its baseline measured in the same run on
// the same data. It prints Markdown for docs/BENCHMARKS.md. bench/run.sh
// builds the binaries and calls it; see docs/BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type command struct {
	help string
	run  func(ctx context.Context, args []string, out io.Writer) error
}

var commands = map[string]command{
	"genlog":    {"generate (or find cached) the realistic audit log; print its path", genlog},
	"grep":      {"time the grep baseline on a file", grepCmd},
	"once":      {"agent --once over a file into a running aggregator vs grep", once},
	"collector": {"OpenTelemetry Collector filelog+json_parser+filter over a file vs grep", collector},
	"latency":   {"append-to-OTLP-arrival latency at paced line rates", latency},
	"ingest":    {"aggregator ingest: concurrent agent streams, plaintext and mTLS", ingest},
	"rss":       {"agent resident memory idle and during a full scan", rss},
	"acksrv":    {"(internal) the ingest baseline: an ack-only stream server", acksrv},
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || commands[args[0]].run == nil {
		fmt.Fprintln(stderr, "usage: twbench COMMAND [flags]\n\ncommands:")
		for _, name := range []string{"genlog", "grep", "once", "collector", "latency", "ingest", "rss"} {
			fmt.Fprintf(stderr, "  %-10s %s\n", name, commands[name].help)
		}
		return 2
	}
	if err := commands[args[0]].run(ctx, args[1:], stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "twbench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
