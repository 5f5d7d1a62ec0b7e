package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/ingest"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

// Run serves until ctx is done, then shuts down gracefully. It returns an
// error when the aggregator cannot start (or a component fails).
func Run(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
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

	// Configuration file.
	fileCfg := config.Default()
	var watcher *config.Watcher
	var pl *pipeline.Pipeline
	if c.ConfigFile != "" {
		cfg, raw, err := config.LoadForWatch(c.ConfigFile)
		if err != nil {
			return configError{fmt.Errorf("--config: %w", err)}
		}
		fileCfg = cfg
		startLimits := cfg.Limits
		watcher = config.NewWatcher(c.ConfigFile, raw, c.ConfigPoll, logger, func(cfg config.Config) {
			if err := pl.Apply(cfg); err != nil {
				logger.Error("config reload rejected, keeping the previous configuration", "err", err)
				return
			}
			if cfg.Limits != startLimits {
				logger.Warn("config reload: limits changed; they are read at start and take effect at the next restart")
			}
		})
	}

	reg := newRegistry()

	// Durable state.
	store, err := openState(c, logger)
	if err != nil {
		return err
	}
	var storeOpen atomic.Bool
	storeOpen.Store(true)
	defer func() {
		storeOpen.Store(false)
		if err := store.Close(); err != nil {
			logger.Error("close state", "err", err)
		}
	}()

	pl, err = pipeline.New(pipeline.Options{
		Store: store, Config: fileCfg, Now: c.Now, Logger: logger, Registerer: reg,
		TickInterval: c.TickInterval,
	})
	if err != nil {
		return configError{fmt.Errorf("--config: %w", err)}
	}

	exp, err := newExporter(ctx, c, store, logger, reg)
	if err != nil {
		return err
	}

	// gRPC.
	var creds credentials.TransportCredentials // nil: plaintext
	if !c.Insecure {
		tc, err := tlsconf.Server(c.TLSCert, c.TLSKey, c.TLSClientCA, logger)
		if err != nil {
			return configError{fmt.Errorf("--tls-cert/--tls-key/--tls-client-ca: %w", err)}
		}
		creds = credentials.NewTLS(tc)
		if err := reg.Register(newCertExpiry(c.TLSCert, c.TLSClientCA)); err != nil {
			return fmt.Errorf("register certificate metrics: %w", err)
		}
	}
	gc := fileCfg.Limits.Config // the file's limits section is the guard's Config
	if c.Guard != nil {
		gc = *c.Guard
	}
	gc.Logger = logger
	g, err := guard.New(gc, reg)
	if err != nil {
		return fmt.Errorf("grpc limits: %w", err)
	}
	opts := append(g.ServerOptions(), grpc.Creds(g.Credentials(creds)))
	in := ingest.New(ingest.Options{
		Processor: pl, Insecure: c.Insecure, TrustDomain: c.TrustDomain,
		MaxBufferedBytes: int64(fileCfg.Limits.MaxBufferedBytes),
		Logger:           logger, Registerer: reg,
	})
	opts = append(opts, in.ServerOptions()...)
	gs := grpc.NewServer(opts...)
	in.Register(gs)
	lis, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}

	// Metrics and health over HTTP.
	var serving atomic.Bool
	var hs *http.Server
	var mlis net.Listener
	if c.MetricsAddr != "" {
		mlis, err = net.Listen("tcp", c.MetricsAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		hs = &http.Server{Handler: httpHandler(reg, func() error {
			switch {
			case !storeOpen.Load():
				return errors.New("state store closed")
			case !serving.Load():
				return errors.New("not serving agents")
			}
			return nil
		}), ReadHeaderTimeout: 10 * time.Second}
	}

	// Components run until shut down, in the order below. Each group has its
	// WaitGroup so that shutdown can wait for one before stopping the next.
	var compWG, wg sync.WaitGroup
	errc := make(chan error, 8)
	runIn := func(g *sync.WaitGroup, name string, f func() error) {
		g.Go(func() {
			if err := f(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	run := func(name string, f func() error) { runIn(&wg, name, f) }
	compCtx, stopComponents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopComponents()
	runIn(&compWG, "pipeline", func() error { return pl.Run(compCtx) })
	if watcher != nil {
		runIn(&compWG, "config watch", func() error { return watcher.Run(compCtx) })
	}
	expCtx, stopExporter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopExporter()
	run("exporter", func() error { return exp.Run(expCtx) })
	var grpcDone sync.WaitGroup
	grpcDone.Go(func() {
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("grpc serve: %w", err)
		}
	})
	if hs != nil {
		run("metrics", func() error {
			if err := hs.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	serving.Store(true)
	maddr := ""
	if mlis != nil {
		maddr = mlis.Addr().String()
	}
	logger.Info("aggregator serving", append([]any{"listen", lis.Addr().String(), "metrics", maddr, "insecure", c.Insecure}, c.ServingAttrs...)...)
	if c.Started != nil {
		c.Started(lis.Addr().String(), maddr)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		logger.Error("aggregator component failed, shutting down", "err", runErr)
	}

	// Graceful shutdown, in dependency order.
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	serving.Store(false)
	in.Drain() // no new batches; those in flight are committed and acked
	gs.Stop()  // close agent streams (they reconnect elsewhere or later)
	grpcDone.Wait()
	stopComponents() // the pipeline runs its last tick on the way out
	compWG.Wait()
	if err := exp.Shutdown(sctx); err != nil {
		logger.Error("exporter shutdown", "err", err)
	}
	stopExporter()
	if hs != nil {
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		runErr = errors.Join(runErr, err)
	}
	logger.Info("aggregator stopped", "took", time.Since(start).Round(time.Millisecond).String(), "outbox_depth", store.Depth())
	return runErr
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
