package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/export"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// exporter is the outbox drainer and the exporter it feeds.
type exporter struct {
	drainer *export.Drainer
	exp     export.Exporter
}

// newExporter builds the OTLP exporter (or the stdout OTLP JSON default,
// with a warning) and the drainer of the outbox.
func newExporter(ctx context.Context, c Config, store *state.Store, logger *slog.Logger, reg prometheus.Registerer) (*exporter, error) {
	cfg := export.Config{Endpoint: c.OTLPEndpoint, Insecure: c.OTLPInsecure}
	ep, err := cfg.Resolve(c.Getenv)
	if err != nil {
		return nil, err
	}
	switch {
	case ep.Stdout():
		logger.Warn("no OTLP endpoint configured (--otlp-endpoint, " + export.EnvEndpoint + ", " + export.EnvLogsEndpoint +
			"): alerts are written to stdout " + stdoutFormat(c.Output))
	case ep.PlaintextRemote():
		logger.Warn("OTLP export in plaintext to a collector that is not on loopback: alerts cross the network unencrypted",
			"endpoint", ep.Target, "from", ep.From)
	}
	if !ep.Stdout() {
		logger.Info("OTLP export", "endpoint", ep.Target, "protocol", export.Protocol, "tls", ep.TLSMode(), "from", ep.From)
	}
	if reg != nil {
		plaintext := 0.0
		if ep.PlaintextRemote() {
			plaintext = 1
		}
		g := prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwatch_aggregator_otlp_plaintext",
			Help: "1 when alerts are exported over OTLP in plaintext to a collector not on loopback, else 0.",
		})
		g.Set(plaintext)
		if err := reg.Register(g); err != nil {
			return nil, fmt.Errorf("register otlp metrics: %w", err)
		}
	}
	// The SDK reports what it cannot handle through OpenTelemetry's
	// global error handler, which prints plain text: log it as ours.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("opentelemetry sdk", "err", err)
	}))
	exp, err := newStdoutOrOTLP(ctx, c, cfg)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	// A partial success is reported through the outbox like any record.
	report := func(r alert.Record) error {
		_, err := store.Commit(state.Change{Records: []alert.Record{r}})
		return err
	}
	d, err := export.NewDrainer(store, exp, export.DrainerConfig{Registerer: reg, Logger: logger, Report: report})
	if err != nil {
		return nil, errors.Join(err, exp.Shutdown(ctx))
	}
	return &exporter{drainer: d, exp: exp}, nil
}

// Run drains the outbox until ctx is done or Shutdown.
func (e *exporter) Run(ctx context.Context) error { return e.drainer.Run(ctx) }

// Shutdown exports what it can within ctx, then closes the exporter.
func (e *exporter) Shutdown(ctx context.Context) error {
	return errors.Join(e.drainer.Shutdown(ctx), e.exp.Shutdown(ctx))
}
