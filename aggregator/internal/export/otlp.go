package export

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

// Exporter delivers records. Export returns nil only when they were
// accepted (or, for a *RejectedError, accepted in part: resending would not
// help).
type Exporter interface {
	Export(ctx context.Context, recs []alert.Record) error
	Shutdown(ctx context.Context) error
}

// Environment variables with which the OTLP exporter finds its endpoint
// when Config.Endpoint is empty.
const (
	EnvLogsEndpoint = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
	EnvEndpoint     = "OTEL_EXPORTER_OTLP_ENDPOINT"
)

// Config selects and tunes the exporter.
type Config struct {
	// Endpoint is the OTLP/gRPC logs endpoint (--otlp-endpoint): HOST:PORT
	// or an http(s) URL (see Resolve). Empty: the
	// OTEL_EXPORTER_OTLP_LOGS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT
	// environment; if those are empty too, stdout in the OTLP JSON file format.
	Endpoint string
	// Insecure uses plaintext gRPC for a HOST:PORT endpoint (--otlp-insecure);
	// with an https URL it is a contradiction.
	Insecure bool
	// Timeout bounds one export request (default 10s).
	Timeout time.Duration
}

// DefaultTimeout bounds one export request.
const DefaultTimeout = 10 * time.Second

// Validate checks the fields set by flags (Resolve checks the environment
// too).
func (c *Config) Validate() error {
	if _, err := c.Resolve(nil); err != nil {
		return err
	}
	if c.Timeout < 0 {
		return fmt.Errorf("otlp timeout %s: must not be negative", c.Timeout)
	}
	return nil
}

// UsesStdout reports whether no OTLP endpoint is configured, neither by
// Config nor by the environment (read through getenv, e.g. os.Getenv): then
// records go to stdout.
func (c *Config) UsesStdout(getenv func(string) string) bool {
	if getenv == nil {
		return c.Endpoint == ""
	}
	_, env := first(getenv, EnvLogsEndpoint, EnvEndpoint)
	return c.Endpoint == "" && env == ""
}

// reconnectMax caps gRPC's reconnect backoff (default 120s) so that a
// collector that comes back is used again within seconds.
const reconnectMax = 5 * time.Second

// OTLP exports records over OTLP/gRPC with the OpenTelemetry logs SDK: each
// record is emitted through an SDK Logger (so resource, scope and record
// construction are the SDK's), collected synchronously, and handed to the
// otlploggrpc Exporter's Export, whose result is the export's result. No
// SDK batch processor is involved: it would drop records on a full queue.
type OTLP struct {
	mu       sync.Mutex
	provider *sdklog.LoggerProvider
	logger   log.Logger
	coll     *collector
	exp      *otlploggrpc.Exporter
	now      func() time.Time
	shutdown sync.Once
	err      error
}

var _ Exporter = (*OTLP)(nil)

// NewOTLP returns an OTLP exporter for cfg's endpoint (the environment is
// not read: see New). It does not connect: the gRPC connection is made on
// the first export and re-made as needed.
func NewOTLP(ctx context.Context, cfg Config) (*OTLP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ep, err := cfg.Resolve(nil)
	if err != nil {
		return nil, err
	}
	return newOTLP(ctx, ep, cfg.Timeout)
}

// newOTLP returns an OTLP exporter for ep.
func newOTLP(ctx context.Context, ep Endpoint, timeout time.Duration) (*OTLP, error) {
	if ep.Stdout() {
		return nil, errors.New("create otlp exporter: no endpoint")
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	creds, err := transportCredentials(ep)
	if err != nil {
		return nil, err
	}
	opts := []otlploggrpc.Option{
		// Both explicit, so that the SDK does not read the endpoint
		// variables again (it would take HOST:PORT for a URL whose scheme
		// is the host, and print why an IP:PORT is not a URL): the
		// credentials decide the transport, they take precedence over
		// WithInsecure.
		otlploggrpc.WithEndpoint(ep.Target),
		otlploggrpc.WithInsecure(),
		otlploggrpc.WithTLSCredentials(creds),
		otlploggrpc.WithTimeout(timeout),
		// The Drainer retries, with its own backoff and metrics.
		otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false}),
		otlploggrpc.WithDialOption(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
			MinConnectTimeout: timeout,
		})),
	}
	exp, err := otlploggrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("create otlp exporter: %w", err)
	}
	coll := &collector{}
	provider := sdklog.NewLoggerProvider(
		sdklog.WithResource(newResource()),
		sdklog.WithProcessor(coll),
		sdklog.WithAttributeCountLimit(-1),
		sdklog.WithAttributeValueLengthLimit(-1),
		// Our records never repeat a key (the pipeline and server tests
		// check every kind); the SDK's de-duplication, which rebuilds an
		// index per attribute added, is then pure cost.
		sdklog.WithAllowKeyDuplication(),
	)
	return &OTLP{
		provider: provider,
		logger:   provider.Logger(ScopeName, log.WithInstrumentationVersion(version.Version)),
		coll:     coll,
		exp:      exp,
		now:      time.Now,
	}, nil
}

// Export sends recs in one OTLP request and returns nil once the endpoint
// accepted them. A partial success (the endpoint rejected some records) is
// returned as a *RejectedError.
func (o *OTLP) Export(ctx context.Context, recs []alert.Record) error {
	if len(recs) == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.coll.records = o.coll.records[:0]
	now := o.now()
	for i := range recs {
		// Not ctx: no span context of the caller belongs on an alert.
		o.logger.Emit(context.Background(), apiRecord(&recs[i], now))
	}
	built := o.coll.records
	o.coll.records = nil
	if len(built) != len(recs) {
		return fmt.Errorf("otlp export: built %d of %d records (exporter shut down?)", len(built), len(recs))
	}
	err := o.exp.Export(ctx, built)
	if err == nil {
		return nil
	}
	if partialOnly(err) {
		return newRejectedError(err, len(recs))
	}
	return fmt.Errorf("otlp export of %d records: %w", len(recs), err)
}

// Shutdown closes the connection. It is safe to call twice.
func (o *OTLP) Shutdown(ctx context.Context) error {
	o.shutdown.Do(func() {
		o.err = errors.Join(o.provider.Shutdown(ctx), o.exp.Shutdown(ctx))
		if o.err != nil {
			o.err = fmt.Errorf("shut down otlp exporter: %w", o.err)
		}
	})
	return o.err
}

// RejectedError is a partial success: the endpoint accepted the request but
// rejected some records. Resending would duplicate the accepted ones, so the
// Drainer counts them and reports the rejection in a record.
type RejectedError struct {
	Err error
	// Rejected is how many records the endpoint rejected (all of the
	// request's when its answer does not say).
	Rejected int64
	// Message is the endpoint's error message.
	Message string
}

// partialRE matches otlploggrpc's report of a partial success.
var partialRE = regexp.MustCompile(`^OTLP partial success: (.*) \((\d+) logs rejected\)$`)

// newRejectedError reads the count and message of otlploggrpc's partial
// success report err (its type is internal) for a request of n records.
func newRejectedError(err error, n int) *RejectedError {
	e := &RejectedError{Err: err}
	var msgs []string
	for _, line := range strings.Split(err.Error(), "\n") {
		m := partialRE.FindStringSubmatch(line)
		if m == nil {
			return &RejectedError{Err: err, Rejected: int64(n), Message: err.Error()}
		}
		k, perr := strconv.ParseInt(m[2], 10, 64)
		if perr != nil {
			return &RejectedError{Err: err, Rejected: int64(n), Message: err.Error()}
		}
		e.Rejected += k
		if m[1] != "empty message" {
			msgs = append(msgs, m[1])
		}
	}
	e.Rejected = min(e.Rejected, int64(n))
	e.Message = strings.Join(msgs, "; ")
	return e
}

func (e *RejectedError) Error() string { return "otlp export: " + e.Err.Error() }
func (e *RejectedError) Unwrap() error { return e.Err }

// partialOnly reports whether err is nothing but otlploggrpc's partial
// success report (its type is internal, so its message identifies it).
func partialOnly(err error) bool {
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.HasPrefix(line, "OTLP partial success") {
			return false
		}
	}
	return true
}

// collector is a synchronous SDK processor that keeps what is emitted, for
// the OTLP exporter to send at once.
type collector struct {
	records []sdklog.Record
}

var _ sdklog.Processor = (*collector)(nil)

func (c *collector) OnEmit(_ context.Context, r *sdklog.Record) error {
	c.records = append(c.records, r.Clone())
	return nil
}

func (c *collector) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }
func (c *collector) Shutdown(context.Context) error                         { return nil }
func (c *collector) ForceFlush(context.Context) error                       { return nil }

// New returns the exporter cfg selects: OTLP/gRPC when an endpoint is
// configured (by cfg or by the environment, read through getenv: see
// Resolve), else the OTLP JSON file format on stdout. The caller warns about
// the latter (see UsesStdout).
func New(ctx context.Context, cfg Config, getenv func(string) string, stdout io.Writer) (Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ep, err := cfg.Resolve(getenv)
	if err != nil {
		return nil, err
	}
	if ep.Stdout() {
		return NewJSON(stdout), nil
	}
	return newOTLP(ctx, ep, cfg.Timeout)
}

// transportCredentials are plaintext or TLS with ep's files.
func transportCredentials(ep Endpoint) (credentials.TransportCredentials, error) {
	if ep.Insecure {
		return insecure.NewCredentials(), nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ep.CAFile != "" {
		pem, err := os.ReadFile(ep.CAFile)
		if err != nil {
			return nil, fmt.Errorf("otlp collector CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("otlp collector CA %s: no PEM certificate", ep.CAFile)
		}
	}
	if ep.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(ep.CertFile, ep.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("otlp client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(tc), nil
}
