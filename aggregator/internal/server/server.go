package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwatch/tokenwatch/internal/version"
)

// Run serves until ctx is done, then shuts down gracefully. It returns an
// error when the aggregator cannot start (or a component fails).
func Run(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	a, err := newService(ctx, withDefaults(c))
	if err != nil {
		return err
	}
	return a.run(ctx)
}

// withDefaults fills the fields of c that may be left unset.
func withDefaults(c Config) Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// httpHandler serves /metrics, /healthz and /readyz.
func httpHandler(reg *prometheus.Registry, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// newRegistry returns the registry /metrics serves, holding the Go runtime,
// process and tokenwatch_build_info collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		version.NewCollector("aggregator"))
	return reg
}
