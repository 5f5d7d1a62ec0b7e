package ingest

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Processor that records what it is given.
type recorder struct {
	mu      sync.Mutex
	batches []pipeline.Batch
	heard   []string
	fail    error
	block   chan struct{} // when set, Process waits for it
	entered chan struct{} // when set, Process signals entry
}

func (r *recorder) Process(_ context.Context, b pipeline.Batch) (pipeline.Result, error) {
	if r.entered != nil {
		r.entered <- struct{}{}
	}
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return pipeline.Result{}, r.fail
	}
	r.batches = append(r.batches, b)
	return pipeline.Result{}, nil
}

func (r *recorder) Heard(cluster, node string, lastGrowth time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.heard = append(r.heard, cluster+"/"+node+"@"+lastGrowth.UTC().Format(time.RFC3339))
}

func (r *recorder) snapshot() ([]pipeline.Batch, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]pipeline.Batch(nil), r.batches...), append([]string(nil), r.heard...)
}

type harness struct {
	srv  *Server
	conn *grpc.ClientConn
}

// start serves s on loopback and dials it with creds.
func start(t *testing.T, s *Server, serverOpts []grpc.ServerOption, creds credentials.TransportCredentials) *harness {
	t.Helper()
	g := grpc.NewServer(serverOpts...)
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		wg.Wait()
	})
	return &harness{srv: s, conn: conn}
}

func insecureHarness(t *testing.T, p Processor) *harness {
	return start(t, New(Options{Processor: p, Insecure: true}), nil, insecure.NewCredentials())
}

func (h *harness) stream(t *testing.T) tokenwatchv1.AuditStreamService_StreamClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := tokenwatchv1.NewAuditStreamServiceClient(h.conn).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func hello(cluster, node string, replay bool) *tokenwatchv1.StreamRequest {
	return &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{
		Cluster: cluster, Node: node, Replay: replay, AgentVersion: "test", SessionId: "s1",
	}}}
}

func batchMsg(seq uint64, auditIDs ...string) *tokenwatchv1.StreamRequest {
	b := &tokenwatchv1.Batch{Seq: seq}
	for _, id := range auditIDs {
		b.Events = append(b.Events, &tokenwatchv1.TokenEvent{
			AuditId: id, Stage: "ResponseComplete", Verb: "create",
			RequestReceivedTimestamp: "2026-11-26T23:09:13.821930Z",
			ObjectRef:                &tokenwatchv1.ObjectRef{Resource: "serviceaccounts", Subresource: "token", Namespace: "team-a", Name: "builder"},
			User:                     &tokenwatchv1.UserInfo{Present: true, Username: "alice"},
		})
	}
	return &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}}
}

var growth = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)

func heartbeat() *tokenwatchv1.StreamRequest {
	return &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Heartbeat{Heartbeat: &tokenwatchv1.Heartbeat{
		Sent: timestamppb.Now(), LastGrowth: timestamppb.New(growth),
	}}}
}

func send(t *testing.T, st tokenwatchv1.AuditStreamService_StreamClient, msgs ...*tokenwatchv1.StreamRequest) {
	t.Helper()
	for _, m := range msgs {
		if err := st.Send(m); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
}

func recv(t *testing.T, st tokenwatchv1.AuditStreamService_StreamClient) *tokenwatchv1.StreamResponse {
	t.Helper()
	r, err := st.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return r
}

// recvErr receives until the stream ends and returns its status code.
func recvErr(t *testing.T, st tokenwatchv1.AuditStreamService_StreamClient) codes.Code {
	t.Helper()
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return codes.OK
			}
			return status.Code(err)
		}
	}
}

func TestStreamAcksAfterProcess(t *testing.T) {
	rec := &recorder{}
	h := insecureHarness(t, rec)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	w := recv(t, st).GetWelcome()
	if w == nil || w.GetCluster() != "prod" || w.GetHeartbeatIntervalMs() != uint32(DefaultHeartbeatInterval/time.Millisecond) {
		t.Fatalf("first response = %v, want a Welcome for prod", w)
	}
	send(t, st, batchMsg(1, "a1", "a2"), heartbeat(), batchMsg(2, "a3"))
	for _, want := range []uint64{1, 2} {
		if got := recv(t, st).GetAck().GetSeq(); got != want {
			t.Fatalf("ack = %d, want %d", got, want)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if code := recvErr(t, st); code != codes.OK {
		t.Errorf("stream ended with %v, want OK", code)
	}
	batches, heard := rec.snapshot()
	if len(batches) != 2 || len(batches[0].Events) != 2 || len(batches[1].Events) != 1 {
		t.Fatalf("processed %d batches, want 2 with 2 and 1 events", len(batches))
	}
	if src := batches[0].Source; src.Cluster != "prod" || src.Node != "cp-1" || batches[0].Replay {
		t.Errorf("source = %+v (replay %v), want prod/cp-1, live", src, batches[0].Replay)
	}
	if e := batches[0].Events[0]; e.AuditID != "a1" || e.Username() != "alice" || !e.IsTokenCreate() {
		t.Errorf("event = %+v, want a1 by alice, a token create", e)
	}
	want := []string{"prod/cp-1@0001-01-01T00:00:00Z", "prod/cp-1@" + growth.Format(time.RFC3339)}
	if len(heard) != 2 || heard[0] != want[0] || heard[1] != want[1] {
		t.Errorf("heard = %q, want %q", heard, want)
	}
}

func TestStreamReplayNotTracked(t *testing.T) {
	rec := &recorder{}
	h := insecureHarness(t, rec)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", true))
	recv(t, st)
	send(t, st, heartbeat(), batchMsg(1, "a1"))
	recv(t, st)
	batches, heard := rec.snapshot()
	if len(heard) != 0 {
		t.Errorf("replay agent heard = %q, want none", heard)
	}
	if len(batches) != 1 || !batches[0].Replay {
		t.Errorf("replay agent's batches = %+v, want one marked Replay", batches)
	}
}

func TestStreamProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		msgs []*tokenwatchv1.StreamRequest
		want codes.Code
	}{
		{"batch before hello", []*tokenwatchv1.StreamRequest{batchMsg(1, "a1")}, codes.InvalidArgument},
		{"hello without node", []*tokenwatchv1.StreamRequest{hello("prod", "", false)}, codes.InvalidArgument},
		{"hello without cluster", []*tokenwatchv1.StreamRequest{hello("", "cp-1", false)}, codes.InvalidArgument},
		{"seq gap", []*tokenwatchv1.StreamRequest{hello("prod", "cp-1", false), batchMsg(2, "a1")}, codes.InvalidArgument},
		{"seq repeat", []*tokenwatchv1.StreamRequest{hello("prod", "cp-1", false), batchMsg(1, "a1"), batchMsg(1, "a1")}, codes.InvalidArgument},
		{"second hello", []*tokenwatchv1.StreamRequest{hello("prod", "cp-1", false), hello("prod", "cp-1", false)}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := insecureHarness(t, &recorder{})
			st := h.stream(t)
			send(t, st, tt.msgs...)
			if code := recvErr(t, st); code != tt.want {
				t.Errorf("stream ended with %v, want %v", code, tt.want)
			}
		})
	}
}

func TestStreamProcessFailureNotAcked(t *testing.T) {
	rec := &recorder{fail: errors.New("disk full")}
	h := insecureHarness(t, rec)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)
	send(t, st, batchMsg(1, "a1"))
	// The failure ends the stream at the agent's next message or, as here,
	// when it closes its side; either way no ack comes first.
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err == nil {
		t.Fatalf("got %v, want the stream to end with Unavailable and no ack", r)
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("stream ended with %v, want Unavailable", code)
	}
}

func TestDrainFinishesInFlight(t *testing.T) {
	rec := &recorder{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	h := insecureHarness(t, rec)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)
	send(t, st, batchMsg(1, "a1"))
	<-rec.entered // the batch is in flight

	drained := make(chan struct{})
	go func() { h.srv.Drain(); close(drained) }()
	select {
	case <-drained:
		t.Fatal("Drain returned while a batch was in flight")
	default:
	}
	close(rec.block)
	<-drained
	if got := recv(t, st).GetAck().GetSeq(); got != 1 {
		t.Fatalf("in-flight batch ack = %d, want 1", got)
	}
	rec.entered, rec.block = nil, nil
	send(t, st, batchMsg(2, "a2"))
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if code := recvErr(t, st); code != codes.Unavailable {
		t.Errorf("batch after Drain: stream ended with %v, want Unavailable", code)
	}
	batches, _ := rec.snapshot()
	if len(batches) != 1 {
		t.Errorf("processed %d batches, want 1", len(batches))
	}
	resp, err := healthpb.NewHealthClient(h.conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after Drain = %v, %v, want NOT_SERVING", resp.GetStatus(), err)
	}
}

func TestHealthServing(t *testing.T) {
	h := insecureHarness(t, &recorder{})
	for _, svc := range []string{"", tokenwatchv1.AuditStreamService_ServiceDesc.ServiceName} {
		resp, err := healthpb.NewHealthClient(h.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health(%q) = %v, %v, want SERVING", svc, resp.GetStatus(), err)
		}
	}
}

func TestMTLSClusterBinding(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"prod"}})
	if err != nil {
		t.Fatal(err)
	}
	stc, err := tlsconf.Server(files.ServerCert, files.ServerKey, files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctc, err := tlsconf.Client(files.AgentCert["prod"], files.AgentKey["prod"], files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctc.ServerName = "localhost"
	rec := &recorder{}
	srv := New(Options{Processor: rec, TrustDomain: "tokenwatch"})
	h := start(t, srv, []grpc.ServerOption{grpc.Creds(credentials.NewTLS(stc))}, credentials.NewTLS(ctc))

	tests := []struct {
		name    string
		claimed string
		want    codes.Code
	}{
		{"matching claim", "prod", codes.OK},
		{"no claim takes the certificate's", "", codes.OK},
		{"claim differs from the certificate", "staging", codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := h.stream(t)
			send(t, st, hello(tt.claimed, "cp-1", false))
			r, err := st.Recv()
			if tt.want != codes.OK {
				if status.Code(err) != tt.want {
					t.Fatalf("Recv = %v, %v, want %v", r, err, tt.want)
				}
				return
			}
			if err != nil || r.GetWelcome().GetCluster() != "prod" {
				t.Fatalf("Recv = %v, %v, want a Welcome for prod", r, err)
			}
			_ = st.CloseSend()
			recvErr(t, st)
		})
	}
	var m dto.Metric
	if err := srv.m.refused.WithLabelValues("cluster_mismatch").Write(&m); err != nil {
		t.Fatal(err)
	}
	if n := m.GetCounter().GetValue(); n != 1 {
		t.Errorf("refused{cluster_mismatch} = %v, want 1", n)
	}
	// An insecure client gets nowhere near the service.
	plain := start(t, New(Options{Processor: rec, TrustDomain: "tokenwatch"}), nil, insecure.NewCredentials())
	st := plain.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	if code := recvErr(t, st); code != codes.Unauthenticated {
		t.Errorf("stream without a client certificate ended with %v, want Unauthenticated", code)
	}
}

// TestStreamCoalescesWaitingBatches: batches that wait while a commit is in
// progress are processed as one, in order, and acknowledged by one
// cumulative ack; a heartbeat between them keeps its place.
func TestStreamCoalescesWaitingBatches(t *testing.T) {
	rec := &recorder{block: make(chan struct{}), entered: make(chan struct{}, 8)}
	queued := make(chan struct{}, 16)
	s := New(Options{Processor: rec, Insecure: true})
	s.queued = func() { queued <- struct{}{} }
	h := start(t, s, nil, insecure.NewCredentials())
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)

	send(t, st, batchMsg(1, "a1"))
	<-queued
	<-rec.entered // batch 1 is being committed
	send(t, st, batchMsg(2, "a2"), batchMsg(3, "a3", "a4"), heartbeat(), batchMsg(4, "a5"), batchMsg(5, "a6"))
	for range 5 {
		<-queued
	}
	close(rec.block)

	var acks []uint64
	for len(acks) == 0 || acks[len(acks)-1] != 5 {
		acks = append(acks, recv(t, st).GetAck().GetSeq())
	}
	if want := []uint64{1, 3, 5}; !slices.Equal(acks, want) {
		t.Errorf("acks = %v, want %v (one per group)", acks, want)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if code := recvErr(t, st); code != codes.OK {
		t.Fatalf("stream ended with %v, want OK", code)
	}
	batches, heard := rec.snapshot()
	var groups [][]string
	for _, b := range batches {
		var ids []string
		for _, e := range b.Events {
			ids = append(ids, e.AuditID)
		}
		groups = append(groups, ids)
	}
	want := [][]string{{"a1"}, {"a2", "a3", "a4"}, {"a5", "a6"}}
	if !slices.EqualFunc(groups, want, slices.Equal) {
		t.Errorf("processed groups %q, want %q", groups, want)
	}
	if len(heard) != 2 {
		t.Errorf("heard %q, want the hello and the heartbeat", heard)
	}
}

// TestEndStreamsDeliversCommittedAck stops a server gracefully while a
// batch is being committed: the agent receives the batch's ack, then
// Unavailable, and the stop ends without the agent closing its stream.
func TestEndStreamsDeliversCommittedAck(t *testing.T) {
	rec := &recorder{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	srv := New(Options{Processor: rec, Insecure: true})
	g := grpc.NewServer()
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	defer wg.Wait()
	defer g.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h := &harness{srv: srv, conn: conn}
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)
	send(t, st, batchMsg(1, "a1"))
	<-rec.entered // the batch is being committed

	stopped := make(chan struct{})
	go func() {
		srv.EndStreams()
		g.GracefulStop()
		srv.Wait()
		close(stopped)
	}()
	close(rec.block)
	if got := recv(t, st).GetAck().GetSeq(); got != 1 {
		t.Fatalf("ack at stop = %d, want 1", got)
	}
	if code := recvErr(t, st); code != codes.Unavailable {
		t.Errorf("stream ended with %v at stop, want Unavailable", code)
	}
	<-stopped
	if batches, _ := rec.snapshot(); len(batches) != 1 {
		t.Errorf("processed %d batches, want 1", len(batches))
	}
}
