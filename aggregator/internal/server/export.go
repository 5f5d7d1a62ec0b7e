package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/export"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
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
	if cfg.UsesStdout(c.Getenv) {
		logger.Warn("no OTLP endpoint configured (--otlp-endpoint, " + export.EnvEndpoint + ", " + export.EnvLogsEndpoint +
			"): alerts are written to stdout " + stdoutFormat(c.Output))
	}
	exp, err := newStdoutOrOTLP(ctx, c, cfg)
	if err != nil {
		return nil, fmt.Errorf("--otlp-endpoint: %w", err)
	}
	d, err := export.NewDrainer(store, exp, export.DrainerConfig{Registerer: reg, Logger: logger})
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
