package guard

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

type metrics struct {
	violations *prometheus.CounterVec
	open       prometheus.Gauge
	throttled  prometheus.Counter
	handshakes *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_limit_violations_total",
			Help: "Streams cut off by a limit against hostile or broken peers, by reason.",
		}, []string{"reason"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwatch_aggregator_grpc_streams_open",
			Help: "Open gRPC streams, health watches included (bounded by the stream limit).",
		}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_throttled_messages_total",
			Help: "Agent messages held back to fit the per-cluster rate limit.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_tls_handshakes_rejected_total",
			Help: "TLS handshakes that failed, by reason (unknown_ca, no_client_certificate, not_tls, certificate_expired, ...).",
		}, []string{"reason"}),
	}
	for _, r := range tlsconf.HandshakeReasons {
		m.handshakes.WithLabelValues(r)
	}
	for _, r := range []string{ReasonMessageTooLarge, ReasonMalformedMessage, ReasonBatchTooLarge, ReasonTooManyStreams,
		ReasonTooManyClusterStreams, ReasonTooManyAgents, ReasonEventRate, ReasonMessageRate, ReasonKeepalive,
		ReasonTooManyPeerStreams, ReasonTooManyWatches, ReasonHelloTimeout} {
		m.violations.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var errs [4]error
	m.violations, errs[0] = register(reg, m.violations)
	m.open, errs[1] = register(reg, m.open)
	m.throttled, errs[2] = register(reg, m.throttled)
	m.handshakes, errs[3] = register(reg, m.handshakes)
	if err := errors.Join(errs[:]...); err != nil {
		return m, fmt.Errorf("register guard metrics: %w", err)
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// the same description (a second Guard on the same registry shares it).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

func (m *metrics) violation(reason string) { m.violations.WithLabelValues(reason).Inc() }
