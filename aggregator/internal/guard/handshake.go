package guard

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

// handshakeLogEvery is how often a reason of failed handshakes is logged at
// most; every one is counted.
const handshakeLogEvery = time.Minute

// handshakeLog rate-limits the log of failed handshakes per reason.
type handshakeLog struct {
	mu  sync.Mutex
	by  map[string]*rate.Sometimes
	log *slog.Logger
}

// handshakeRejected counts a failed server-side handshake by reason and
// logs it at most once a minute per reason. Connections closed during the
// handshake (TCP probes, agents stopping) are logged at debug level only.
func (g *Guard) handshakeRejected(remote net.Addr, err error) {
	reason := tlsconf.HandshakeReason(err)
	g.m.handshakes.WithLabelValues(reason).Inc()
	h := &g.hs
	if h.log == nil {
		return
	}
	h.mu.Lock()
	s := h.by[reason]
	if s == nil {
		s = &rate.Sometimes{First: 1, Interval: handshakeLogEvery}
		h.by[reason] = s
	}
	h.mu.Unlock()
	level := slog.LevelWarn
	if reason == tlsconf.HandshakeClosed || reason == tlsconf.HandshakeTimeout {
		level = slog.LevelDebug
	}
	addr := ""
	if remote != nil {
		addr = remote.String()
	}
	s.Do(func() {
		h.log.Log(context.Background(), level, "agent TLS handshake rejected (logged at most once a minute per reason; counted in tokenwatch_aggregator_tls_handshakes_rejected_total)",
			"reason", reason, "remote", addr, "hint", handshakeHint(reason), "err", err)
	})
}

// handshakeHint says what an operator can do about a reason.
func handshakeHint(reason string) string {
	switch reason {
	case tlsconf.HandshakeNotTLS:
		return "the peer speaks plaintext: an agent started with --insecure, or not an agent"
	case tlsconf.HandshakeNoCertificate:
		return "the agent presented no client certificate: give it --tls-cert and --tls-key"
	case tlsconf.HandshakeUnknownCA:
		return "the agent certificate is not signed by a CA in --tls-client-ca"
	case tlsconf.HandshakeExpired, tlsconf.HandshakeNotYetValid:
		return "the agent certificate is outside its validity period: renew it (or check clocks)"
	case tlsconf.HandshakeBadUsage:
		return "the agent certificate lacks the client-auth extended key usage"
	case tlsconf.HandshakePeerRejected:
		return "the agent refused this aggregator's certificate: check the agent's --tls-ca and the names in --tls-cert"
	}
	return ""
}
