// Command aggregator receives token-create audit events from tokenwatch
// agents, applies exclusions, deduplicates, correlates across clusters and
// exports alerts as OTLP log records.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/export"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/server"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole program: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c server.Config
	fs := flag.NewFlagSet("aggregator", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed on one line below
	fs.StringVar(&c.Listen, "listen", server.DefaultListen, "gRPC `HOST:PORT` agents connect to (also serves the gRPC health service)")
	fs.BoolVar(&c.Insecure, "insecure", false, "accept plaintext agents; only with a loopback --listen")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "server certificate `file` (PEM)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "server private key `file` (PEM)")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", "", "CA bundle `file` that signs agent certificates")
	fs.StringVar(&c.TrustDomain, "trust-domain", server.DefaultTrustDomain, "SPIFFE trust domain of agent certificates (spiffe://<domain>/cluster/<name>)")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", "", "OTLP/gRPC logs endpoint: `HOST:PORT` (TLS unless --otlp-insecure) or http://HOST[:PORT] (plaintext) or https://HOST[:PORT] (TLS); OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT take the same forms; none: OTLP JSON on stdout")
	fs.BoolVar(&c.OTLPInsecure, "otlp-insecure", false, "plaintext OTLP for a HOST:PORT endpoint (an https:// endpoint with it is refused)")
	fs.StringVar(&c.Output, "output", export.OutputOTLPJSON, "stdout `format` without an OTLP endpoint: otlp-json (the OTLP JSON file format, for machines) or text (one line per record, for people)")
	fs.StringVar(&c.StateDir, "state-dir", server.DefaultStateDir, "durable state `dir`ectory: outbox of alerts not yet exported, dedupe record")
	fs.BoolVar(&c.StateResetCorrupt, "state-reset-corrupt", false, "when the state file is corrupt, move it aside (<file>.corrupt-<time>) and start empty, discarding its alerts not yet exported and its dedupe record; without it a corrupt file stops the start")
	fs.StringVar(&c.ConfigFile, "config", "", "YAML configuration `file`; re-read when it changes")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "HTTP `HOST:PORT` for /metrics, /healthz, /readyz (off when empty)")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "Usage of aggregator:")
			fs.PrintDefaults()
			fmt.Fprintf(stdout, "Environment:\n  GOMEMLIMIT\n    \tthe Go soft memory limit; when unset, AUTOMEMLIMIT of the cgroup's memory limit\n  AUTOMEMLIMIT\n    \tfraction of the cgroup memory limit for the Go soft memory limit, in (0, 1] (default %g), or off\n", defaultMemoryRatio)
			return 0
		}
		fmt.Fprintf(stderr, "aggregator: %v (see --help)\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "aggregator: unexpected argument %q: every setting is a flag\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.String("aggregator"))
		return 0
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "aggregator: --log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	c.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	c.Stdout = stdout
	if err := c.Validate(); err != nil {
		fmt.Fprintf(stderr, "aggregator: %v\n", err)
		return 2
	}
	if c.ConfigFile != "" {
		// Read here too, before anything is logged: a bad file is one line.
		if _, err := config.Load(c.ConfigFile); err != nil {
			fmt.Fprintf(stderr, "aggregator: --config: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
			return 2
		}
	}
	mem, err := setMemoryLimit()
	if err != nil {
		fmt.Fprintf(stderr, "aggregator: %v\n", err)
		return 2
	}
	c.ServingAttrs = mem
	if err := server.Run(ctx, c); err != nil {
		fmt.Fprintf(stderr, "aggregator: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		if errors.Is(err, server.ErrCorruptState) || errors.Is(err, server.ErrConfig) {
			return 2 // the operator has to act: restarting does not help
		}
		return 1
	}
	return 0
}
