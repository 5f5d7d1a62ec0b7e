package guard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Violation reasons, the values of the reason label.
const (
	ReasonMessageTooLarge       = "message_too_large"
	ReasonMalformedMessage      = "malformed_message"
	ReasonBatchTooLarge         = "batch_too_large"
	ReasonTooManyStreams        = "too_many_streams"
	ReasonTooManyClusterStreams = "too_many_cluster_streams"
	ReasonTooManyAgents         = "too_many_agents"
	// ReasonTooManyPeerStreams: one certificate holds MaxStreamsPerCluster
	// agent streams, those still waiting for their Hello included.
	ReasonTooManyPeerStreams = "too_many_certificate_streams"
	// ReasonTooManyWatches: the health watches (MaxHealthWatches, or
	// MaxHealthWatchesPerPeer of one certificate) are all taken.
	ReasonTooManyWatches = "too_many_health_watches"
	// ReasonHelloTimeout: a stream sent no first message within HelloTimeout.
	ReasonHelloTimeout = "hello_timeout"
	ReasonEventRate    = "event_rate"
	ReasonMessageRate  = "message_rate"
	// ReasonKeepalive: a client pinged more often than the keepalive policy
	// allows and gRPC closed its connection (GOAWAY too_many_pings); counted
	// only on connections served through Credentials.
	ReasonKeepalive = "keepalive"
)

// Guard holds the limits' shared state: stream counts and per-cluster rate
// limiters. Use one Guard per gRPC server.
type Guard struct {
	cfg     Config
	m       *metrics
	now     func() time.Time
	streams chan struct{} // semaphore of MaxStreams (agent streams)
	watches chan struct{} // semaphore of MaxHealthWatches (other streams)

	mu       sync.Mutex
	clusters map[clusterKey]int // open agent streams
	agents   map[agentKey]*agent
	// owners counts the streams of each verified certificate from the
	// moment they open, before any Hello: what one certificate holds is
	// bounded whatever its streams send (or do not send).
	owners map[string]*owner

	hs handshakeLog // failed handshakes' log

	// admitted, when set (tests), is called once a new stream has been
	// admitted (nil) or refused by the stream limits.
	admitted atomic.Pointer[func(error)]
}

// owner is what one certificate holds.
type owner struct{ streams, watches int }

// agentKey identifies a rate budget: the cluster its Hello claims and, with
// mTLS, the identity of its verified certificate. The node name is not part
// of it: any certificate holder picks any node name, so budgets are per
// cluster (the kit issues one certificate per cluster), and naming more
// nodes buys no more rate. A peer whose certificate binds cluster X but who
// claims cluster Y (and is refused by the handler right after the Hello) is
// charged to its own budget, never to the real agents of Y. Replaying
// streams (Hello.replay) share their cluster's replay buckets.
type agentKey struct {
	cluster, peer string
	replay        bool
}

// clusterKey counts concurrent streams per claimed cluster and certificate.
type clusterKey struct{ cluster, peer string }

// agent is one cluster's rate state.
type agent struct {
	events   *rate.Limiter
	messages *rate.Limiter
	streams  int // open streams using this state
}

// New returns a Guard with cfg (zero fields take defaults) whose metrics are
// registered with reg (nil: not registered). It fails when cfg is invalid
// or the metrics cannot be registered.
func New(cfg Config, reg prometheus.Registerer) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g, err := newGuard(cfg.withDefaults(), reg)
	if err != nil {
		return nil, err
	}
	return g, nil
}

func newGuard(cfg Config, reg prometheus.Registerer) (*Guard, error) {
	m, err := newMetrics(reg)
	g := &Guard{
		cfg:      cfg,
		m:        m,
		now:      time.Now,
		streams:  make(chan struct{}, cfg.MaxStreams),
		watches:  make(chan struct{}, cfg.MaxHealthWatches),
		clusters: map[clusterKey]int{},
		agents:   map[agentKey]*agent{},
		owners:   map[string]*owner{},
		hs:       handshakeLog{by: map[string]*rate.Sometimes{}, log: cfg.Logger},
	}
	return g, err
}

// ServerOptions returns the gRPC server options that enforce cfg, with
// metrics registered with reg. Validate cfg at start-up: fields it would
// reject take their defaults here, and a metric that cannot be registered
// is still counted, unexported (New reports both).
func ServerOptions(cfg Config, reg prometheus.Registerer) []grpc.ServerOption {
	g, _ := newGuard(cfg.withDefaults(), reg)
	return g.ServerOptions()
}

// ServerOptions returns the gRPC server options that enforce g's limits.
func (g *Guard) ServerOptions() []grpc.ServerOption {
	c := g.cfg
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(c.MaxRecvMsgBytes),
		grpc.MaxConcurrentStreams(uint32(c.MaxStreamsPerConn)),
		grpc.MaxHeaderListSize(c.MaxHeaderListBytes),
		grpc.ConnectionTimeout(c.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             c.KeepaliveMinTime,
			PermitWithoutStream: !c.KeepaliveDenyWithoutStream,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    c.KeepaliveTime,
			Timeout: c.KeepaliveTimeout,
		}),
		grpc.ChainStreamInterceptor(g.StreamInterceptor),
		// Each connection holds a read buffer of this size for its life
		// (gRPC's default, 32 KiB, is 32 MiB for 1,000 agents). It still
		// holds a whole HTTP/2 frame of the default 16 KiB maximum.
		grpc.ReadBufferSize(readBufferBytes),
	}
	if c.WindowBytes > 0 {
		opts = append(opts, grpc.InitialWindowSize(int32(c.WindowBytes)), grpc.InitialConnWindowSize(int32(c.WindowBytes)))
	}
	return opts
}

// readBufferBytes is each connection's read buffer (see ServerOptions).
const readBufferBytes = 16 << 10

// StreamInterceptor enforces the stream and message limits. It is part of
// ServerOptions; it is exported for servers that assemble their own chain.
//
// Agent streams and the other streams (health watches) have separate
// pools, so watches never take an agent's slot. A certificate's streams are
// counted from the moment they open, so streams that never send a Hello
// cannot take more than one cluster's share; and the Hello must arrive
// within HelloTimeout: the guard receives it on the handler's behalf, so no
// handler waits for it unbounded.
func (g *Guard) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != tokenwatchv1.AuditStreamService_Stream_FullMethodName {
		return g.serveWatch(srv, ss, handler)
	}
	select {
	case g.streams <- struct{}{}:
	default:
		g.m.violation(ReasonTooManyStreams)
		return g.admit(status.Errorf(codes.ResourceExhausted, "too many concurrent streams (limit %d)", g.cfg.MaxStreams))
	}
	defer func() { <-g.streams }()
	id := peerIdentity(ss.Context())
	if err := g.take(id, false); err != nil {
		return g.admit(err)
	}
	defer g.give(id, false)
	g.admit(nil)
	g.m.open.Inc()
	defer g.m.open.Dec()
	w := &stream{ServerStream: ss, g: g}
	first, err := g.firstMessage(ss)
	if err == nil {
		err = w.check(first)
	} else {
		err = w.recvError(err)
	}
	if v := w.failed(); v != nil {
		w.release()
		return v
	}
	w.first, w.firstErr, w.pre = first, err, true
	err = handler(srv, w)
	w.release()
	if v := w.failed(); v != nil {
		return v
	}
	return err
}

// serveWatch serves a stream that is not an agent stream (a health watch)
// from its own pool, at most MaxHealthWatchesPerPeer per certificate.
func (g *Guard) serveWatch(srv any, ss grpc.ServerStream, handler grpc.StreamHandler) error {
	select {
	case g.watches <- struct{}{}:
	default:
		g.m.violation(ReasonTooManyWatches)
		return g.admit(status.Errorf(codes.ResourceExhausted, "too many concurrent health watches (limit %d)", g.cfg.MaxHealthWatches))
	}
	defer func() { <-g.watches }()
	id := peerIdentity(ss.Context())
	if err := g.take(id, true); err != nil {
		return g.admit(err)
	}
	defer g.give(id, true)
	g.admit(nil)
	g.m.open.Inc()
	defer g.m.open.Dec()
	return handler(srv, ss)
}

// admit reports an admission decision to the test hook and returns err.
func (g *Guard) admit(err error) error {
	if f := g.admitted.Load(); f != nil {
		(*f)(err)
	}
	return err
}

// take counts one more stream (or health watch) of the certificate id; a
// peer without a verified certificate (plaintext, loopback only) is bounded
// by its connection's stream limit instead.
func (g *Guard) take(id string, watch bool) error {
	if id == "" {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	o := g.owners[id]
	if o == nil {
		o = &owner{}
		g.owners[id] = o
	}
	switch {
	case watch && o.watches >= g.cfg.MaxHealthWatchesPerPeer:
		g.m.violation(ReasonTooManyWatches)
		g.dropOwnerLocked(id, o)
		return status.Errorf(codes.ResourceExhausted, "too many concurrent health watches for certificate %q (limit %d)", id, g.cfg.MaxHealthWatchesPerPeer)
	case !watch && o.streams >= g.cfg.MaxStreamsPerCluster:
		g.m.violation(ReasonTooManyPeerStreams)
		g.dropOwnerLocked(id, o)
		return status.Errorf(codes.ResourceExhausted, "too many concurrent streams for certificate %q (limit %d)", id, g.cfg.MaxStreamsPerCluster)
	case watch:
		o.watches++
	default:
		o.streams++
	}
	return nil
}

// give returns what take counted.
func (g *Guard) give(id string, watch bool) {
	if id == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	o := g.owners[id]
	if o == nil {
		return
	}
	if watch {
		o.watches--
	} else {
		o.streams--
	}
	g.dropOwnerLocked(id, o)
}

func (g *Guard) dropOwnerLocked(id string, o *owner) {
	if o.streams <= 0 && o.watches <= 0 {
		delete(g.owners, id)
	}
}

// firstMessage receives a stream's first message, waiting at most
// HelloTimeout. On timeout the stream is ended by returning: gRPC then
// closes it, which ends the receive still waiting (its goroutine touches
// nothing but its own channel).
func (g *Guard) firstMessage(ss grpc.ServerStream) (*tokenwatchv1.StreamRequest, error) {
	type result struct {
		m   *tokenwatchv1.StreamRequest
		err error
	}
	got := make(chan result, 1)
	go func() {
		m := new(tokenwatchv1.StreamRequest)
		err := ss.RecvMsg(m)
		got <- result{m, err}
	}()
	t := time.NewTimer(g.cfg.HelloTimeout)
	defer t.Stop()
	select {
	case r := <-got:
		return r.m, r.err
	case <-t.C:
		g.m.violation(ReasonHelloTimeout)
		return nil, status.Errorf(codes.DeadlineExceeded, "no hello within %s of the stream's start", g.cfg.HelloTimeout)
	}
}

// stream watches one agent stream's messages.
type stream struct {
	grpc.ServerStream
	g *Guard

	// One goroutine calls RecvMsg at a time, but it may still be in one
	// (ingest's receive loop) when the handler has returned and release
	// runs: mu guards agent and violation between the two. Lock order:
	// Guard.mu before stream.mu.
	mu        sync.Mutex
	key       agentKey
	agent     *agent
	violation error

	// The first message, received and checked by the interceptor, is what
	// the handler's first RecvMsg returns.
	pre      bool
	first    *tokenwatchv1.StreamRequest
	firstErr error
}

func (s *stream) RecvMsg(m any) error {
	if v := s.failed(); v != nil {
		return v
	}
	if s.pre {
		s.pre = false
		if s.firstErr != nil {
			return s.firstErr
		}
		if req, ok := requestOf(m); ok {
			req.Msg = s.first.Msg // shallow: the codec's screened events keep their identity
		} else if pm, ok := m.(proto.Message); ok {
			proto.Merge(pm, s.first)
		}
		s.first = nil
		return nil
	}
	err := s.ServerStream.RecvMsg(m)
	if err != nil {
		return s.recvError(err)
	}
	req, ok := requestOf(m)
	if !ok {
		return nil
	}
	return s.check(req)
}

// requestOf returns the StreamRequest m is, or the one it embeds: a handler
// may receive into its own type that carries one (ingest's also carries its
// codec's verdicts), and the limits apply to it all the same.
func requestOf(m any) (*tokenwatchv1.StreamRequest, bool) {
	if req, ok := m.(*tokenwatchv1.StreamRequest); ok {
		return req, true
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, false
	}
	req, ok := pm.ProtoReflect().Interface().(*tokenwatchv1.StreamRequest)
	return req, ok
}

// check applies the limits to one received message.
func (s *stream) check(req *tokenwatchv1.StreamRequest) error {
	switch msg := req.GetMsg().(type) {
	case *tokenwatchv1.StreamRequest_Hello:
		if s.current() == nil {
			if err := s.hello(msg.Hello); err != nil {
				return err
			}
		}
		return s.admit(0)
	case *tokenwatchv1.StreamRequest_Batch:
		b := msg.Batch
		if n := BatchEvents(b); n > s.g.cfg.MaxEventsPerBatch {
			return s.fail(ReasonBatchTooLarge, codes.ResourceExhausted,
				"batch %d has %d events, more than the limit of %d", b.GetSeq(), n, s.g.cfg.MaxEventsPerBatch)
		}
		if n := len(b.GetLosses()); n > s.g.cfg.MaxLossesPerBatch {
			return s.fail(ReasonBatchTooLarge, codes.ResourceExhausted,
				"batch %d has %d loss reports, more than the limit of %d", b.GetSeq(), n, s.g.cfg.MaxLossesPerBatch)
		}
		return s.admit(BatchEvents(b))
	default:
		return s.admit(0)
	}
}

// BatchEvents is what a batch counts as events against MaxEventsPerBatch
// and the event rate: its token-create events, lineage uses and use counts
// together. Each use and count is processed like an event (a use is one,
// decoded), and the agent's Hello.max_batch_events bounds the three
// together, so a lineage agent's batch fits the same limit.
func BatchEvents(b *tokenwatchv1.Batch) int {
	return len(b.GetEvents()) + len(b.GetUses()) + len(b.GetCounts())
}

// recvError counts oversized and undecodable messages. gRPC itself has
// already ended the stream with its status (ResourceExhausted "received
// message larger than max", Internal "failed to unmarshal"); the handler's
// return value cannot change what the peer sees.
func (s *stream) recvError(err error) error {
	if errors.Is(err, io.EOF) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch {
	case st.Code() == codes.ResourceExhausted:
		s.g.m.violation(ReasonMessageTooLarge)
	case st.Code() == codes.Internal && strings.Contains(st.Message(), "unmarshal"):
		s.g.m.violation(ReasonMalformedMessage)
	}
	return err
}

func (s *stream) fail(reason string, code codes.Code, format string, args ...any) error {
	s.g.m.violation(reason)
	v := status.Errorf(code, format, args...)
	s.mu.Lock()
	s.violation = v
	s.mu.Unlock()
	return v
}

// failed returns the stream's violation, nil while it has none.
func (s *stream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.violation
}

// current returns the agent whose slot the stream holds, nil before its
// Hello and after release.
func (s *stream) current() *agent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agent
}

// hello takes a per-cluster stream slot and the cluster's rate state.
func (s *stream) hello(h *tokenwatchv1.Hello) error {
	g := s.g
	key := agentKey{cluster: h.GetCluster(), peer: peerIdentity(s.Context()), replay: h.GetReplay()}
	ck := clusterKey{cluster: key.cluster, peer: key.peer}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.clusters[ck] >= g.cfg.MaxStreamsPerCluster {
		return s.fail(ReasonTooManyClusterStreams, codes.ResourceExhausted,
			"too many concurrent streams for cluster %q (limit %d)", key.cluster, g.cfg.MaxStreamsPerCluster)
	}
	a := g.agents[key]
	if a == nil {
		if len(g.agents) >= g.cfg.MaxAgents {
			g.sweepLocked()
		}
		if len(g.agents) >= g.cfg.MaxAgents {
			return s.fail(ReasonTooManyAgents, codes.ResourceExhausted,
				"too many distinct clusters with recent traffic (limit %d)", g.cfg.MaxAgents)
		}
		events := rate.NewLimiter(rate.Limit(g.cfg.EventsPerSecond), g.cfg.EventBurst)
		if key.replay {
			events = rate.NewLimiter(rate.Limit(g.cfg.ReplayEventsPerSecond), g.cfg.ReplayEventBurst)
		}
		a = &agent{
			events:   events,
			messages: rate.NewLimiter(rate.Limit(g.cfg.MessagesPerSecond), g.cfg.MessageBurst),
		}
		g.agents[key] = a
	}
	a.streams++
	g.clusters[ck]++
	s.mu.Lock()
	s.key, s.agent = key, a
	s.mu.Unlock()
	return nil
}

// peerIdentity names the verified client certificate of a TLS peer by its
// URI SANs (its SPIFFE ID), or by its subject when it has none; "" without
// TLS.
func peerIdentity(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return ""
	}
	leaf := info.State.PeerCertificates[0]
	if len(leaf.URIs) == 0 {
		return "subject:" + leaf.Subject.String()
	}
	ids := make([]string, len(leaf.URIs))
	for i, u := range leaf.URIs {
		ids[i] = u.String()
	}
	return strings.Join(ids, ",")
}

// sweepLocked forgets agents without open streams whose buckets have
// refilled: a fresh limiter would behave the same, so nothing is lost.
func (g *Guard) sweepLocked() {
	now := g.now()
	for k, a := range g.agents {
		if a.streams == 0 &&
			a.events.TokensAt(now) >= float64(a.events.Burst()) &&
			a.messages.TokensAt(now) >= float64(a.messages.Burst()) {
			delete(g.agents, k)
		}
	}
}

// admit charges one message and events events to the agent's buckets,
// waiting up to MaxThrottle for them. Messages before the Hello are not
// charged (the handler refuses them).
func (s *stream) admit(events int) error {
	a := s.current()
	if a == nil {
		return nil
	}
	now := s.g.now()
	msg := a.messages.ReserveN(now, 1)
	if !msg.OK() {
		return s.fail(ReasonMessageRate, codes.ResourceExhausted, "message rate limit exceeded")
	}
	delay := msg.DelayFrom(now)
	var ev *rate.Reservation
	if events > 0 {
		ev = a.events.ReserveN(now, events)
		if !ev.OK() {
			msg.CancelAt(now)
			return s.fail(ReasonEventRate, codes.ResourceExhausted,
				"batch of %d events exceeds the event burst of %d", events, a.events.Burst())
		}
		delay = max(delay, ev.DelayFrom(now))
	}
	if delay > s.g.cfg.MaxThrottle {
		msg.CancelAt(now)
		reason, what := ReasonMessageRate, fmt.Sprintf("%g messages/s", s.g.cfg.MessagesPerSecond)
		if ev != nil {
			if ev.DelayFrom(now) >= msg.DelayFrom(now) {
				reason, what = ReasonEventRate, fmt.Sprintf("%g events/s", float64(a.events.Limit()))
			}
			ev.CancelAt(now)
		}
		return s.fail(reason, codes.ResourceExhausted,
			"rate limit of %s for cluster %q exceeded", what, s.key.cluster)
	}
	if delay <= 0 {
		return nil
	}
	s.g.m.throttled.Inc()
	return wait(s.Context(), delay)
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// release returns the stream's per-cluster slot.
func (s *stream) release() {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	s.mu.Lock()
	a, key := s.agent, s.key
	s.agent = nil
	s.mu.Unlock()
	if a == nil {
		return
	}
	a.streams--
	ck := clusterKey{cluster: key.cluster, peer: key.peer}
	if g.clusters[ck]--; g.clusters[ck] <= 0 {
		delete(g.clusters, ck)
	}
}
