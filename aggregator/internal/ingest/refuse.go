package ingest

import (
	"context"
	"net"
	"sync"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"
)

// refusals rate-limits the log of refused streams per reason. Its zero
// value is ready.
type refusals struct {
	mu sync.Mutex
	by map[string]*rate.Sometimes
}

// refuse counts a refused stream under reason and logs msg with attrs at
// most once a minute per reason (logEvery), naming the peer's address.
func (s *Server) refuse(ctx context.Context, reason, msg string, attrs ...any) {
	s.m.refused.WithLabelValues(reason).Inc()
	r := &s.refusals
	r.mu.Lock()
	if r.by == nil {
		r.by = map[string]*rate.Sometimes{}
	}
	st := r.by[reason]
	if st == nil {
		st = &rate.Sometimes{First: 1, Interval: logEvery}
		r.by[reason] = st
	}
	r.mu.Unlock()
	st.Do(func() {
		args := append([]any{"reason", reason, "remote", remoteAddr(ctx)}, attrs...)
		s.logger.Warn(msg+" (logged at most once a minute per reason; counted in tokenwatch_aggregator_streams_refused_total)", args...)
	})
}

func remoteAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if a, ok := p.Addr.(*net.TCPAddr); ok {
		return a.String()
	}
	return p.Addr.String()
}
