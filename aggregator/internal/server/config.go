package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/export"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

// Defaults of the aggregator's flags.
const (
	DefaultListen      = ":8443"
	DefaultTrustDomain = "tokenwatch"
	DefaultStateDir    = "/var/lib/tokenwatch-aggregator"
	// ShutdownTimeout bounds a graceful stop (the contract allows 10 s).
	ShutdownTimeout = 8 * time.Second
)

// Config is everything the aggregator's flags say.
type Config struct {
	Listen       string // --listen
	Insecure     bool   // --insecure
	TLSCert      string // --tls-cert
	TLSKey       string // --tls-key
	TLSClientCA  string // --tls-client-ca
	TrustDomain  string // --trust-domain
	OTLPEndpoint string // --otlp-endpoint
	OTLPInsecure bool   // --otlp-insecure
	StateDir     string // --state-dir
	ConfigFile   string // --config
	MetricsAddr  string // --metrics-addr
	// Output is the stdout format without an OTLP endpoint (--output):
	// export.OutputOTLPJSON (when empty) or export.OutputText.
	Output string
	// StateResetCorrupt (--state-reset-corrupt) moves a corrupt state
	// file aside and starts empty instead of refusing to start.
	StateResetCorrupt bool

	// Logger; discarded when nil.
	Logger *slog.Logger
	// ServingAttrs are added to the "aggregator serving" line: facts
	// decided before Run (the Go soft memory limit) that are logged only
	// once the state opened, so that a start that fails says one line.
	ServingAttrs []any
	// Stdout receives OTLP JSON lines when no OTLP endpoint is configured.
	Stdout io.Writer
	// Getenv reads the environment (OTEL_EXPORTER_OTLP_*); os.Getenv when nil.
	Getenv func(string) string
	// Now is the clock; time.Now when nil (tests inject one).
	Now func() time.Time
	// TickInterval overrides the pipeline's periodic work interval (tests).
	TickInterval time.Duration
	// ConfigPoll overrides how often the config file is polled (tests).
	ConfigPoll time.Duration
	// Guard overrides the gRPC limits (benchmarks raise the per-agent
	// rates); guard.DefaultConfig() when nil.
	Guard *guard.Config
	// Started, when set, is called once the gRPC and metrics listeners are
	// bound, with their addresses (metrics "" when off).
	Started func(grpcAddr, metricsAddr string)
}

// getenv is c.Getenv, os.Getenv when nil.
func (c *Config) getenv() func(string) string {
	if c.Getenv == nil {
		return os.Getenv
	}
	return c.Getenv
}

// Validate checks the flags, each error naming its flag, on one line.
func (c *Config) Validate() error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if c.Listen == "" {
		bad("--listen: required")
	} else if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("--listen %q: want HOST:PORT", c.Listen)
	}
	errs = append(errs, c.transportProblems()...)
	if c.TrustDomain == "" && !c.Insecure {
		bad("--trust-domain: required")
	}
	// The OTLP endpoint from the flags and the environment alike: a
	// mistake in either stops the start (exit 2), not the export.
	ec := export.Config{Endpoint: c.OTLPEndpoint, Insecure: c.OTLPInsecure}
	if _, err := ec.Resolve(c.getenv()); err != nil {
		bad("%v", err)
	}
	if c.StateDir == "" {
		bad("--state-dir: required")
	}
	if c.Output != "" {
		if err := export.ValidateOutput(c.Output); err != nil {
			bad("%v", err)
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad("--metrics-addr %q: want HOST:PORT", c.MetricsAddr)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// transportProblems checks that agents connect over mTLS with all three
// files, or in plaintext on a loopback --listen.
func (c *Config) transportProblems() []string {
	tlsFlags := c.TLSCert != "" || c.TLSKey != "" || c.TLSClientCA != ""
	switch {
	case c.Insecure && tlsFlags:
		return []string{"--insecure: cannot be combined with --tls-cert/--tls-key/--tls-client-ca"}
	case c.Insecure:
		if c.Listen != "" && tlsconf.CheckLoopback(c.Listen) != nil {
			return []string{fmt.Sprintf("--insecure: refusing plaintext on --listen %s: only a loopback address (127.0.0.1, ::1, localhost) may be insecure", c.Listen)}
		}
		return nil
	case !tlsFlags:
		return []string{"no transport security: give --tls-cert, --tls-key and --tls-client-ca for mTLS, or --insecure with a loopback --listen"}
	}
	var errs []string
	if c.TLSCert == "" {
		errs = append(errs, "--tls-cert: required for mTLS")
	}
	if c.TLSKey == "" {
		errs = append(errs, "--tls-key: required for mTLS")
	}
	if c.TLSClientCA == "" {
		errs = append(errs, "--tls-client-ca: required for mTLS (the CA that signs agent certificates)")
	}
	return errs
}
