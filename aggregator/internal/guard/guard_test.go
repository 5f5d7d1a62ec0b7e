package guard_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ackServer behaves like the ingest handler as far as the guard cares: a
// Hello gets a Welcome, each batch an Ack, and a Recv error ends the stream
// with that error. recvErrs, when set, is told of each such error: the
// guard has counted what it counts of it by then (gRPC may already have
// sent the peer its status).
type ackServer struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	recvErrs chan<- struct{}
}

func (a ackServer) Stream(stream tokenwatchv1.AuditStreamService_StreamServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			select {
			case a.recvErrs <- struct{}{}:
			default:
			}
			return err
		}
		var resp *tokenwatchv1.StreamResponse
		switch msg := req.GetMsg().(type) {
		case *tokenwatchv1.StreamRequest_Hello:
			resp = &tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: &tokenwatchv1.Welcome{Cluster: msg.Hello.GetCluster()}}}
		case *tokenwatchv1.StreamRequest_Batch:
			resp = &tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: msg.Batch.GetSeq()}}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

type fixture struct {
	addr     string
	reg      *prometheus.Registry
	conn     *grpc.ClientConn
	g        *guard.Guard
	recvErrs <-chan struct{} // see ackServer
}

func start(t *testing.T, cfg guard.Config) *fixture {
	t.Helper()
	return startWith(t, cfg, insecure.NewCredentials(), nil)
}

// startWith serves with the given server options (TLS) and dials the first
// connection with client credentials.
func startWith(t *testing.T, cfg guard.Config, client credentials.TransportCredentials, extra []grpc.ServerOption) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	g, err := guard.New(cfg, reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if extra == nil {
		// Plaintext through the guard's credentials, which count keepalive
		// violations (TLS tests bring their own credentials).
		extra = []grpc.ServerOption{grpc.Creds(g.Credentials(nil))}
	}
	gs := grpc.NewServer(append(g.ServerOptions(), extra...)...)
	recvErrs := make(chan struct{}, 16)
	tokenwatchv1.RegisterAuditStreamServiceServer(gs, ackServer{recvErrs: recvErrs})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	f := &fixture{addr: lis.Addr().String(), reg: reg, g: g, recvErrs: recvErrs}
	f.conn = f.dialWith(t, client)
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return f
}

func (f *fixture) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	return f.dialWith(t, insecure.NewCredentials())
}

func (f *fixture) dialWith(t *testing.T, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// recvError waits until a handler's Recv has returned an error.
func (f *fixture) recvError(t *testing.T) {
	t.Helper()
	select {
	case <-f.recvErrs:
	case <-time.After(20 * time.Second): // a failure bound, not a pace
		t.Fatal("no handler saw its Recv fail")
	}
}

func (f *fixture) violations(reason string) float64 {
	return f.metric("tokenwatch_aggregator_limit_violations_total", reason)
}

// metric returns a counter's value; reason selects the label value of a
// counter vector, "" a plain counter.
func (f *fixture) metric(name, reason string) float64 {
	mfs, err := f.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// agent is one client stream.
type agent struct {
	t      *testing.T
	stream tokenwatchv1.AuditStreamService_StreamClient
	cancel context.CancelFunc
	seq    uint64
}

// open starts a stream on conn and exchanges Hello/Welcome.
func open(t *testing.T, conn *grpc.ClientConn, cluster, node string) (*agent, error) {
	t.Helper()
	return openHello(t, conn, &tokenwatchv1.Hello{Cluster: cluster, Node: node})
}

// openHello starts a stream on conn with hello and waits for the Welcome.
func openHello(t *testing.T, conn *grpc.ClientConn, hello *tokenwatchv1.Hello) (*agent, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	stream, err := tokenwatchv1.NewAuditStreamServiceClient(conn).Stream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	a := &agent{t: t, stream: stream, cancel: cancel}
	t.Cleanup(a.close)
	_ = stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: hello}})
	if _, err := stream.Recv(); err != nil {
		return nil, err
	}
	return a, nil
}

func mustOpen(t *testing.T, conn *grpc.ClientConn, cluster, node string) *agent {
	t.Helper()
	a, err := open(t, conn, cluster, node)
	if err != nil {
		t.Fatalf("open(%s/%s): %v", cluster, node, err)
	}
	return a
}

func (a *agent) close() {
	_ = a.stream.CloseSend()
	a.cancel()
}

// send sends a batch of n events (each with a padding of pad bytes) and
// waits for its Ack.
func (a *agent) send(n, pad int) error {
	a.seq++
	b := &tokenwatchv1.Batch{Seq: a.seq}
	for i := 0; i < n; i++ {
		b.Events = append(b.Events, &tokenwatchv1.TokenEvent{AuditId: "id", RequestUri: strings.Repeat("x", pad)})
	}
	// A failed Send reports io.EOF; the status comes from Recv.
	_ = a.stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}})
	resp, err := a.stream.Recv()
	if err != nil {
		return err
	}
	if got := resp.GetAck().GetSeq(); got != a.seq {
		a.t.Fatalf("ack %d, want %d", got, a.seq)
	}
	return nil
}

func wantCode(t *testing.T, what string, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: err = %v, want %v", what, err, code)
	}
	if !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("%s: message %q does not mention %q", what, status.Convert(err).Message(), contains)
	}
}

func TestOversizedMessageCutOffOthersUnaffected(t *testing.T) {
	f := start(t, guard.Config{MaxRecvMsgBytes: 64 << 10})
	good := mustOpen(t, f.conn, "a", "n1")
	bad := mustOpen(t, f.dial(t), "b", "n1")
	if err := good.send(1, 100); err != nil {
		t.Fatalf("good agent before: %v", err)
	}
	wantCode(t, "oversized batch", bad.send(1, 100<<10), codes.ResourceExhausted, "larger than max")
	f.recvError(t)
	if err := good.send(10, 1000); err != nil {
		t.Fatalf("good agent after the oversized message: %v", err)
	}
	if got := f.violations(guard.ReasonMessageTooLarge); got != 1 {
		t.Errorf("message_too_large violations = %v, want 1", got)
	}
	// The peer can come back with a new stream: only the stream was cut off.
	again := mustOpen(t, f.dial(t), "b", "n1")
	if err := again.send(1, 10); err != nil {
		t.Fatalf("new stream after the cut-off: %v", err)
	}
}

func TestBatchLimits(t *testing.T) {
	f := start(t, guard.Config{MaxEventsPerBatch: 10, MaxLossesPerBatch: 2, EventBurst: 100})
	a := mustOpen(t, f.conn, "a", "n1")
	if err := a.send(10, 0); err != nil {
		t.Fatalf("batch at the limit: %v", err)
	}
	wantCode(t, "11 events", a.send(11, 0), codes.ResourceExhausted, "more than the limit of 10")

	b := mustOpen(t, f.conn, "a", "n2")
	_ = b.stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{
		Seq: 1, Losses: []*tokenwatchv1.LossReport{{}, {}, {}},
	}}})
	_, err := b.stream.Recv()
	wantCode(t, "3 losses", err, codes.ResourceExhausted, "loss reports")
	if got := f.violations(guard.ReasonBatchTooLarge); got != 2 {
		t.Errorf("batch_too_large violations = %v, want 2", got)
	}
}

// TestBatchLimitsCountLineage: a batch's lineage uses and use counts count
// as events, against the per-batch limit and the event rate alike.
func TestBatchLimitsCountLineage(t *testing.T) {
	tests := []struct {
		name                string
		events, uses, count int
		wantErr             bool
	}{
		{"at the limit", 4, 3, 3, false},
		{"uses over the limit", 4, 4, 3, true},
		{"counts over the limit", 0, 0, 11, true},
	}
	f := start(t, guard.Config{MaxEventsPerBatch: 10, EventBurst: 1000})
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustOpen(t, f.conn, "a", fmt.Sprintf("n%d", i))
			b := &tokenwatchv1.Batch{Seq: 1}
			for range tt.events {
				b.Events = append(b.Events, &tokenwatchv1.TokenEvent{AuditId: "id"})
			}
			for range tt.uses {
				b.Uses = append(b.Uses, &tokenwatchv1.LineageEvent{Event: &tokenwatchv1.TokenEvent{AuditId: "id"}})
			}
			for range tt.count {
				b.Counts = append(b.Counts, &tokenwatchv1.UseCount{Key: "j"})
			}
			_ = a.stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}})
			_, err := a.stream.Recv()
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("batch of %d events, %d uses, %d counts: %v", tt.events, tt.uses, tt.count, err)
				}
				return
			}
			wantCode(t, tt.name, err, codes.ResourceExhausted, "more than the limit of 10")
		})
	}

	// The event rate charges them too: a burst of 10 takes one full batch.
	r := start(t, guard.Config{EventsPerSecond: 1e-6, EventBurst: 10, MaxEventsPerBatch: 10, MaxThrottle: time.Nanosecond})
	a := mustOpen(t, r.conn, "a", "n1")
	b := &tokenwatchv1.Batch{Seq: 1, Uses: make([]*tokenwatchv1.LineageEvent, 10)}
	for i := range b.Uses {
		b.Uses[i] = &tokenwatchv1.LineageEvent{}
	}
	_ = a.stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}})
	if _, err := a.stream.Recv(); err != nil {
		t.Fatalf("burst of uses: %v", err)
	}
	a.seq = 1
	wantCode(t, "one event over the rate", a.send(1, 0), codes.ResourceExhausted, "events/s")
}

// rawCodec sends pre-encoded bytes under the proto content type.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawCodec) Unmarshal(b []byte, v any) error { return errors.New("unused") }
func (rawCodec) Name() string                    { return "proto" }

var _ encoding.Codec = rawCodec{}

func TestMalformedMessage(t *testing.T) {
	f := start(t, guard.Config{})
	good := mustOpen(t, f.conn, "a", "n1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	desc := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
	cs, err := f.dial(t).NewStream(ctx, desc, tokenwatchv1.AuditStreamService_Stream_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	// Field 1 with the invalid wire type 7.
	_ = cs.SendMsg([]byte{0x0f, 0x01, 0x02})
	err = cs.RecvMsg(new([]byte))
	// gRPC answers an undecodable message itself, with Internal.
	wantCode(t, "malformed message", err, codes.Internal, "failed to unmarshal")
	f.recvError(t)
	if got := f.violations(guard.ReasonMalformedMessage); got != 1 {
		t.Errorf("malformed_message violations = %v, want 1", got)
	}
	if err := good.send(1, 10); err != nil {
		t.Fatalf("good agent after the malformed stream: %v", err)
	}
}

func TestTooManyStreams(t *testing.T) {
	f := start(t, guard.Config{MaxStreams: 2, MaxStreamsPerCluster: 2})
	a1 := mustOpen(t, f.conn, "a", "n1")
	mustOpen(t, f.dial(t), "b", "n1")
	_, err := open(t, f.dial(t), "c", "n1")
	wantCode(t, "third stream", err, codes.ResourceExhausted, "too many concurrent streams")
	// Health watches have their own pool: agent streams do not starve them.
	watch, err := healthpb.NewHealthClient(f.conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = watch.Recv()
	}
	if err != nil {
		t.Fatalf("health watch next to full agent streams: %v", err)
	}
	// Unary calls are not limited by the stream count.
	if _, err := healthpb.NewHealthClient(f.conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check: %v", err)
	}
	if got := f.violations(guard.ReasonTooManyStreams); got != 1 {
		t.Errorf("too_many_streams violations = %v, want 1", got)
	}
	// Ending a stream frees its slot: the slot is released before the
	// server writes the final status the client's Recv sees.
	_ = a1.stream.CloseSend()
	if _, err := a1.stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("closing stream: %v, want io.EOF", err)
	}
	mustOpen(t, f.dial(t), "c", "n1")
}

func TestTooManyStreamsPerCluster(t *testing.T) {
	f := start(t, guard.Config{MaxStreamsPerCluster: 2})
	mustOpen(t, f.conn, "a", "n1")
	mustOpen(t, f.conn, "a", "n2")
	_, err := open(t, f.conn, "a", "n3")
	wantCode(t, "third stream of cluster a", err, codes.ResourceExhausted, `cluster "a"`)
	b := mustOpen(t, f.conn, "b", "n1")
	if err := b.send(1, 0); err != nil {
		t.Fatalf("cluster b: %v", err)
	}
	if got := f.violations(guard.ReasonTooManyClusterStreams); got != 1 {
		t.Errorf("too_many_cluster_streams violations = %v, want 1", got)
	}
}

func TestEventRateLimit(t *testing.T) {
	// Practically no refill: the burst is all an agent gets during the test.
	f := start(t, guard.Config{EventsPerSecond: 1e-6, EventBurst: 10, MaxEventsPerBatch: 10, MaxThrottle: time.Nanosecond})
	a := mustOpen(t, f.conn, "a", "n1")
	if err := a.send(10, 0); err != nil {
		t.Fatalf("burst: %v", err)
	}
	wantCode(t, "over the rate", a.send(1, 0), codes.ResourceExhausted, "events/s")
	// The budget is the cluster's: another node name draws on the same one,
	// so claiming more node names buys no more rate.
	b := mustOpen(t, f.conn, "a", "n2")
	wantCode(t, "another node name", b.send(1, 0), codes.ResourceExhausted, `events/s for cluster "a"`)
	// Another cluster has its own.
	c := mustOpen(t, f.conn, "b", "n1")
	if err := c.send(10, 0); err != nil {
		t.Fatalf("other cluster: %v", err)
	}
	// Reconnecting does not reset the budget.
	a2 := mustOpen(t, f.dial(t), "a", "n1")
	wantCode(t, "reconnected", a2.send(1, 0), codes.ResourceExhausted, "events/s")
	if got := f.violations(guard.ReasonEventRate); got != 3 {
		t.Errorf("event_rate violations = %v, want 3", got)
	}
}

// TestFixedWindowCarriesLargeMessages: with a fixed flow-control window, a
// message several windows long still arrives (flow control paces it).
func TestFixedWindowCarriesLargeMessages(t *testing.T) {
	f := start(t, guard.Config{WindowBytes: 64 << 10})
	a := mustOpen(t, f.conn, "a", "n1")
	if err := a.send(4, 100<<10); err != nil {
		t.Fatalf("batch of ~400 KiB through 64 KiB windows: %v", err)
	}
}

func TestReplayHasItsOwnEventBucket(t *testing.T) {
	f := start(t, guard.Config{
		EventsPerSecond: 1e-6, EventBurst: 10, MaxEventsPerBatch: 10, MaxThrottle: time.Nanosecond,
		ReplayEventsPerSecond: 1e-6, ReplayEventBurst: 30,
	})
	live := mustOpen(t, f.conn, "a", "n1")
	if err := live.send(10, 0); err != nil {
		t.Fatalf("live burst: %v", err)
	}
	wantCode(t, "live over the rate", live.send(1, 0), codes.ResourceExhausted, "1e-06 events/s")
	// The same node replaying a backlog draws on the larger replay bucket,
	// not on the exhausted live one.
	replay, err := openHello(t, f.dial(t), &tokenwatchv1.Hello{Cluster: "a", Node: "n1", Replay: true})
	if err != nil {
		t.Fatalf("open replay: %v", err)
	}
	for i := range 3 {
		if err := replay.send(10, 0); err != nil {
			t.Fatalf("replay batch %d: %v", i+1, err)
		}
	}
	wantCode(t, "replay over its burst", replay.send(1, 0), codes.ResourceExhausted, "events/s")
	if got := f.violations(guard.ReasonEventRate); got != 2 {
		t.Errorf("event_rate violations = %v, want 2", got)
	}
}

func TestMessageRateLimit(t *testing.T) {
	f := start(t, guard.Config{MessagesPerSecond: 1e-6, MessageBurst: 3, MaxThrottle: time.Nanosecond})
	a := mustOpen(t, f.conn, "a", "n1") // the Hello is message 1
	for i := 0; i < 2; i++ {
		if err := a.send(1, 0); err != nil {
			t.Fatalf("batch %d: %v", i+1, err)
		}
	}
	wantCode(t, "fourth message", a.send(1, 0), codes.ResourceExhausted, "messages/s")
	if got := f.violations(guard.ReasonMessageRate); got != 1 {
		t.Errorf("message_rate violations = %v, want 1", got)
	}
}

func TestThrottleIsBackpressure(t *testing.T) {
	// 10 events of burst at 50/s: each further batch of 10 waits ~200ms
	// instead of being refused.
	f := start(t, guard.Config{EventsPerSecond: 50, EventBurst: 10, MaxEventsPerBatch: 10})
	a := mustOpen(t, f.conn, "a", "n1")
	for i := 0; i < 3; i++ {
		if err := a.send(10, 0); err != nil {
			t.Fatalf("batch %d: %v", i+1, err)
		}
	}
	if got := f.metric("tokenwatch_aggregator_throttled_messages_total", ""); got < 1 {
		t.Errorf("throttled messages = %v, want at least 1", got)
	}
	if got := f.violations(guard.ReasonEventRate); got != 0 {
		t.Errorf("event_rate violations = %v, want 0", got)
	}
}

// TestKeepaliveEnforcement pings faster than KeepaliveMinTime over a raw
// HTTP/2 connection (gRPC clients cannot ping more often than every 10s):
// the server answers with GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
func TestKeepaliveEnforcement(t *testing.T) {
	f := start(t, guard.Config{KeepaliveMinTime: time.Hour})
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, bufio.NewReader(conn))
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			break // the server may already have closed the connection
		}
	}
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without GOAWAY: %v", err)
		}
		if ga, ok := frame.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || string(ga.DebugData()) != "too_many_pings" {
				t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", ga.ErrCode, ga.DebugData())
			}
			break
		}
	}
	// The GOAWAY was counted as it was written, before we could read it.
	if got := f.violations(guard.ReasonKeepalive); got != 1 {
		t.Errorf("violations{reason=%q} = %v, want 1", guard.ReasonKeepalive, got)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		give guard.Config
		want string // "" for valid
	}{
		{name: "zero is defaults", give: guard.Config{}},
		{name: "defaults", give: guard.DefaultConfig()},
		{name: "negative size", give: guard.Config{MaxRecvMsgBytes: -1}, want: "MaxRecvMsgBytes"},
		{name: "negative rate", give: guard.Config{EventsPerSecond: -1}, want: "EventsPerSecond"},
		{name: "negative throttle", give: guard.Config{MaxThrottle: -time.Second}, want: "MaxThrottle"},
		{name: "cluster above total", give: guard.Config{MaxStreams: 4, MaxStreamsPerCluster: 8}, want: "MaxStreamsPerCluster"},
		{name: "burst below batch", give: guard.Config{EventBurst: 10, MaxEventsPerBatch: 11}, want: "EventBurst"},
		{name: "window too small", give: guard.Config{WindowBytes: 1000}, want: "WindowBytes"},
		{name: "replay burst below batch", give: guard.Config{ReplayEventBurst: 10, MaxEventsPerBatch: 11, EventBurst: 11}, want: "ReplayEventBurst"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.want)
			}
			if _, err := guard.New(tt.give, nil); err == nil {
				t.Fatalf("New accepted an invalid config")
			}
		})
	}
}

func TestServerOptionsTwiceOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	if n := len(guard.ServerOptions(guard.Config{}, reg)); n == 0 {
		t.Fatal("ServerOptions returned no options")
	}
	if _, err := guard.New(guard.Config{}, reg); err != nil {
		t.Fatalf("second Guard on the same registry: %v", err)
	}
}

// TestImpostorDoesNotDrainRealAgent: over mTLS, a peer whose certificate
// binds cluster x but who claims prod/n1 (the handler would refuse it right
// after the Hello; this stub does not) spends its own budget and stream
// slots, not those of the real prod agents.
func TestImpostorDoesNotDrainRealAgent(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"prod", "x"}, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := tlsconf.Server(files.ServerCert, files.ServerKey, files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := func(cluster string) credentials.TransportCredentials {
		c, err := tlsconf.ClientCredentials(files.AgentCert[cluster], files.AgentKey[cluster], files.CA, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	f := startWith(t, guard.Config{MessagesPerSecond: 1e-6, MessageBurst: 3, MaxThrottle: time.Nanosecond, MaxStreamsPerCluster: 1},
		creds("x"), []grpc.ServerOption{grpc.Creds(credentials.NewTLS(serverTLS))})

	impostor := mustOpen(t, f.conn, "prod", "n1")
	for i := 0; i < 2; i++ {
		if err := impostor.send(1, 0); err != nil {
			t.Fatalf("impostor batch %d: %v", i+1, err)
		}
	}
	wantCode(t, "impostor over its budget", impostor.send(1, 0), codes.ResourceExhausted, "messages/s")
	holder := mustOpen(t, f.conn, "x", "n1") // holds the impostor certificate's one stream

	real := mustOpen(t, f.dialWith(t, creds("prod")), "prod", "n1")
	for i := 0; i < 2; i++ {
		if err := real.send(1, 0); err != nil {
			t.Fatalf("real agent batch %d: %v", i+1, err)
		}
	}
	_, err = open(t, f.conn, "prod", "n3")
	wantCode(t, "impostor's second stream", err, codes.ResourceExhausted, `for certificate "spiffe://tokenwatch/cluster/x"`)
	_ = holder
}
