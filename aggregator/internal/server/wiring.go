package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/ingest"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/lifecycle"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

// service is one run of the aggregator: the durable state and the
// components around it. The components, in dependency order (stopped in
// reverse, under one deadline of ShutdownTimeout):
//
//	metrics HTTP   /metrics, /healthz, /readyz (when --metrics-addr)
//	exporter       drains the outbox to OTLP (or stdout)
//	pipeline       the periodic tick: stage grace, budgets, silence
//	config watch   re-reads --config and applies it to the pipeline
//	gRPC ingest    the agents' streams, feeding the pipeline
//
// So a stop drains ingest, lets the pipeline run its last tick, flushes the
// exporter, stops serving metrics, and only then closes the state.
type service struct {
	c         Config
	logger    *slog.Logger
	reg       *prometheus.Registry
	fileCfg   config.Config
	store     *state.Store
	storeOpen atomic.Bool
	serving   atomic.Bool

	pl      *pipeline.Pipeline
	watcher *config.Watcher // nil without --config
	exp     *exporter
	grpc    *grpcServer
	metrics *metricsServer // nil without --metrics-addr
	g       lifecycle.Group
}

// newService builds the aggregator's parts; nothing runs yet. On an
// error, what it had opened is released.
func newService(ctx context.Context, c Config) (_ *service, err error) {
	// a is not the named result: the error returns below set that to nil,
	// and the deferred release needs what a built.
	a := &service{c: c, logger: c.Logger, reg: newRegistry(), fileCfg: config.Default()}
	if err := a.loadConfigFile(); err != nil {
		return nil, err
	}
	if a.store, err = openState(c, a.logger); err != nil {
		return nil, err
	}
	a.storeOpen.Store(true)
	defer func() {
		if err != nil {
			a.components()
			_ = a.g.Shutdown(ctx) // before Start: releases what the components built hold
			a.closeStore()
		}
	}()
	a.pl, err = pipeline.New(pipeline.Options{
		Store: a.store, Config: a.fileCfg, Now: c.Now, Logger: a.logger, Registerer: a.reg,
		TickInterval: c.TickInterval,
	})
	if err != nil {
		return nil, configError{fmt.Errorf("--config: %w", err)}
	}
	if a.exp, err = newExporter(ctx, c, a.store, a.logger, a.reg); err != nil {
		return nil, err
	}
	if a.grpc, err = a.newGRPC(); err != nil {
		return nil, err
	}
	if c.MetricsAddr != "" {
		if a.metrics, err = a.newMetrics(); err != nil {
			return nil, err
		}
	}
	a.components()
	return a, nil
}

// components lists the components built, in dependency order.
func (a *service) components() {
	if a.metrics != nil {
		a.g.Add(a.metrics)
	}
	if a.exp != nil {
		a.g.Add(named{"exporter", a.exp, a.logger})
	}
	if a.pl != nil {
		a.g.Add(named{"pipeline", lifecycle.Func(a.pl.Run), a.logger})
	}
	if a.watcher != nil && a.pl != nil {
		a.g.Add(named{"config watch", lifecycle.Func(a.watcher.Run), a.logger})
	}
	if a.grpc != nil {
		a.g.Add(a.grpc)
	}
}

// loadConfigFile reads --config, if given, and prepares its watcher.
func (a *service) loadConfigFile() error {
	c, logger := a.c, a.logger
	if c.ConfigFile == "" {
		return nil
	}
	cfg, raw, err := config.LoadForWatch(c.ConfigFile)
	if err != nil {
		return configError{fmt.Errorf("--config: %w", err)}
	}
	a.fileCfg = cfg
	startLimits := cfg.Limits
	a.watcher = config.NewWatcher(c.ConfigFile, raw, c.ConfigPoll, logger, func(cfg config.Config) {
		if err := a.pl.Apply(cfg); err != nil {
			logger.Error("config reload rejected, keeping the previous configuration", "err", err)
			return
		}
		if cfg.Limits != startLimits {
			logger.Warn("config reload: limits changed; they are read at start and take effect at the next restart")
		}
	})
	return nil
}

// newGRPC builds the gRPC server agents stream to, with its limits and
// the ingest service, and binds --listen.
func (a *service) newGRPC() (*grpcServer, error) {
	c := a.c
	var creds credentials.TransportCredentials // nil: plaintext
	if !c.Insecure {
		tc, err := tlsconf.Server(c.TLSCert, c.TLSKey, c.TLSClientCA, a.logger)
		if err != nil {
			return nil, configError{fmt.Errorf("--tls-cert/--tls-key/--tls-client-ca: %w", err)}
		}
		creds = credentials.NewTLS(tc)
		if err := a.reg.Register(newCertExpiry(c.TLSCert, c.TLSClientCA)); err != nil {
			return nil, fmt.Errorf("register certificate metrics: %w", err)
		}
	}
	gc := a.fileCfg.Limits.Config // the file's limits section is the guard's Config
	if c.Guard != nil {
		gc = *c.Guard
	}
	gc.Logger = a.logger
	g, err := guard.New(gc, a.reg)
	if err != nil {
		return nil, fmt.Errorf("grpc limits: %w", err)
	}
	opts := append(g.ServerOptions(), grpc.Creds(g.Credentials(creds)))
	in := ingest.New(ingest.Options{
		Processor: a.pl, Insecure: c.Insecure, TrustDomain: c.TrustDomain,
		MaxBufferedBytes: int64(a.fileCfg.Limits.MaxBufferedBytes),
		Logger:           a.logger, Registerer: a.reg,
	})
	opts = append(opts, in.ServerOptions()...)
	gs := grpc.NewServer(opts...)
	in.Register(gs)
	lis, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	return &grpcServer{in: in, gs: gs, lis: lis, serving: &a.serving}, nil
}

// newMetrics binds --metrics-addr for /metrics, /healthz and /readyz.
func (a *service) newMetrics() (*metricsServer, error) {
	lis, err := net.Listen("tcp", a.c.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	hs := &http.Server{Handler: httpHandler(a.reg, func() error {
		switch {
		case !a.storeOpen.Load():
			return errors.New("state store closed")
		case !a.serving.Load():
			return errors.New("not serving agents")
		}
		return nil
	}), ReadHeaderTimeout: 10 * time.Second}
	return &metricsServer{hs: hs, lis: lis}, nil
}

// run starts the components, serves until ctx is done or one fails, then
// stops them and closes the state.
func (a *service) run(ctx context.Context) error {
	defer a.closeStore()
	a.g.Start(ctx)
	a.serving.Store(true)
	addr, maddr := a.grpc.lis.Addr().String(), ""
	if a.metrics != nil {
		maddr = a.metrics.lis.Addr().String()
	}
	a.logger.Info("aggregator serving", append([]any{"listen", addr, "metrics", maddr, "insecure", a.c.Insecure}, a.c.ServingAttrs...)...)
	if a.c.Started != nil {
		a.c.Started(addr, maddr)
	}
	if err := a.g.Wait(ctx); err != nil {
		a.logger.Error("aggregator component failed, shutting down", "err", err)
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	err := a.g.Shutdown(sctx)
	a.logger.Info("aggregator stopped", "took", time.Since(start).Round(time.Millisecond).String(), "outbox_depth", a.store.Depth())
	return err
}

// closeStore closes the durable state; /readyz says so from then on.
func (a *service) closeStore() {
	a.storeOpen.Store(false)
	if err := a.store.Close(); err != nil {
		a.logger.Error("close state", "err", err)
	}
}

// named prefixes a component's Run error with its name and logs its
// Shutdown error: what a component could not flush stays in the outbox for
// the next start, so an unclean stop is no failure of the run.
type named struct {
	name   string
	c      lifecycle.Component
	logger *slog.Logger
}

func (n named) Run(ctx context.Context) error {
	if err := n.c.Run(ctx); err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	return nil
}

func (n named) Shutdown(ctx context.Context) error {
	if err := n.c.Shutdown(ctx); err != nil {
		n.logger.Error(n.name+" shutdown", "err", err)
	}
	return nil
}

// grpcServer serves the agents' streams. Its Shutdown marks the aggregator
// not serving, drains ingest (batches in flight are committed and acked,
// new ones refused) and ends the streams, then stops the gRPC server
// gracefully, so that the acks sent reach the agents, until ctx ends (then
// at once): agents reconnect elsewhere or later.
type grpcServer struct {
	in      *ingest.Server
	gs      *grpc.Server
	lis     net.Listener
	serving *atomic.Bool
}

func (s *grpcServer) Run(context.Context) error {
	if err := s.gs.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc serve: %w", err)
	}
	return nil
}

func (s *grpcServer) Shutdown(ctx context.Context) error {
	s.serving.Store(false)
	s.in.EndStreams() // every committed batch's ack is sent, then its stream's status
	stopped := make(chan struct{})
	go func() {
		s.gs.GracefulStop() // writes out what the streams sent
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.gs.Stop() // other RPCs (health watches) held it: close them
		<-stopped
	}
	s.in.Wait()       // the streams' writers and receivers, which end with their streams
	_ = s.lis.Close() // Serve closes it; this is for a Shutdown before Run
	return nil
}

// metricsServer serves /metrics, /healthz and /readyz over HTTP until the
// end: /readyz answers "not serving agents" while the others stop.
type metricsServer struct {
	hs  *http.Server
	lis net.Listener
}

func (m *metricsServer) Run(context.Context) error {
	if err := m.hs.Serve(m.lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

func (m *metricsServer) Shutdown(ctx context.Context) error {
	if err := m.hs.Shutdown(ctx); err != nil {
		m.hs.Close()
	}
	_ = m.lis.Close() // Serve closes it; this is for a Shutdown before Run
	return nil
}
