package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stub is a recording AuditStreamService: it checks the protocol (Hello
// first, sequence numbers from 1 without gaps), records what arrives and
// acknowledges each batch unless holding.
type stub struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer

	changes
	hold       bool
	hellos     []*tokenwatchv1.Hello
	events     []string // audit IDs, in arrival order, all streams
	seqs       [][]uint64
	heartbeats []*tokenwatchv1.Heartbeat
	violations []string
}

var _ tokenwatchv1.AuditStreamServiceServer = (*stub)(nil)

func newStub(hold bool) *stub { return &stub{hold: hold, changes: newChanges()} }

// changes is the state of a test server that tests wait on: mu guards it,
// and changed is closed and replaced on every change (notifyLocked).
type changes struct {
	mu      sync.Mutex
	changed chan struct{}
}

func newChanges() changes { return changes{changed: make(chan struct{})} }

// notifyLocked wakes the waiters. Called with mu held.
func (c *changes) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait blocks until cond (called with mu held) is true; 20 s is a failure
// bound, not a measurement.
func (c *changes) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		ok, ch := cond(), c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (st *stub) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	st.mu.Lock()
	if first.GetHello() == nil {
		st.violations = append(st.violations, "first message is not a hello")
		st.mu.Unlock()
		return errors.New("no hello")
	}
	st.hellos = append(st.hellos, first.GetHello())
	st.seqs = append(st.seqs, nil)
	stream_ := len(st.seqs) - 1
	st.notifyLocked()
	st.mu.Unlock()
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: &tokenwatchv1.Welcome{Cluster: first.GetHello().Cluster}}}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		st.mu.Lock()
		var ack uint64
		switch {
		case req.GetHello() != nil:
			st.violations = append(st.violations, "second hello")
		case req.GetHeartbeat() != nil:
			st.heartbeats = append(st.heartbeats, req.GetHeartbeat())
		case req.GetBatch() != nil:
			b := req.GetBatch()
			if want := uint64(len(st.seqs[stream_]) + 1); b.Seq != want {
				st.violations = append(st.violations, fmt.Sprintf("stream %d: batch seq %d, want %d", stream_, b.Seq, want))
			}
			st.seqs[stream_] = append(st.seqs[stream_], b.Seq)
			for _, e := range b.Events {
				st.events = append(st.events, e.AuditId)
			}
			for _, l := range b.Losses {
				st.events = append(st.events, "loss:"+l.Reason)
			}
			if !st.hold {
				ack = b.Seq
			}
		}
		st.notifyLocked()
		st.mu.Unlock()
		if ack > 0 {
			if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: ack}}}); err != nil {
				return err
			}
		}
	}
}

// serve runs st on addr ("127.0.0.1:0" for a fresh port) until the test ends
// or stop is called.
func serve(t *testing.T, addr string, st *stub) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, st)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

// recorder records OnAck marks.
type recorder struct {
	mu    sync.Mutex
	marks []any
}

func (r *recorder) onAck(m any) {
	r.mu.Lock()
	r.marks = append(r.marks, m)
	r.mu.Unlock()
}

func (r *recorder) last() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.marks) == 0 {
		return nil
	}
	return r.marks[len(r.marks)-1]
}

func newSender(t *testing.T, addr string, rec *recorder, mod func(*Config)) *Sender {
	t.Helper()
	cfg := Config{
		Target:      addr,
		Credentials: insecure.NewCredentials(),
		Hello:       &tokenwatchv1.Hello{Cluster: "c1", Node: "n1", SessionId: "s"},
		BackoffMin:  5 * time.Millisecond,
		BackoffMax:  50 * time.Millisecond,
		OnAck:       rec.onAck,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs s.Run in a goroutine; the returned function waits for it.
func start(s *Sender, ctx context.Context) func() error {
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	return func() error { return <-errc }
}

func events(prefix string, n int) []*tokenwatchv1.TokenEvent {
	evs := make([]*tokenwatchv1.TokenEvent, n)
	for i := range evs {
		evs[i] = &tokenwatchv1.TokenEvent{AuditId: fmt.Sprintf("%s-%d", prefix, i)}
	}
	return evs
}

func ids(evs []*tokenwatchv1.TokenEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.AuditId)
	}
	return out
}

func TestDeliverAllThenDrain(t *testing.T) {
	st := newStub(false)
	addr, _ := serve(t, "127.0.0.1:0", st)
	rec := &recorder{}
	s := newSender(t, addr, rec, func(c *Config) {
		c.MaxBatchEvents = 7
		c.MaxUnacked = 3
		c.Status = func() *tokenwatchv1.Heartbeat { return &tokenwatchv1.Heartbeat{File: "audit.log", Offset: 42} }
	})
	wait := start(s, context.Background())

	var want []string
	for i := range 50 {
		evs := events(fmt.Sprint(i), i%5) // some calls carry no events: their mark moves alone
		want = append(want, ids(evs)...)
		if err := s.Enqueue(context.Background(), evs, nil, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Enqueue(context.Background(), nil, []*tokenwatchv1.LossReport{{Reason: "line_too_long"}}, 50); err != nil {
		t.Fatal(err)
	}
	want = append(want, "loss:line_too_long")
	s.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v, want nil after Close", err)
	}
	if err := s.Enqueue(context.Background(), events("late", 1), nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Enqueue after Close = %v, want ErrClosed", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if diff := cmp.Diff(want, st.events); diff != "" {
		t.Errorf("events at the aggregator (-want +got):\n%s", diff)
	}
	if len(st.violations) > 0 {
		t.Errorf("protocol violations: %v", st.violations)
	}
	if got := rec.last(); got != 50 {
		t.Errorf("last acknowledged mark = %v, want 50", got)
	}
	for i := 1; i < len(rec.marks); i++ {
		if rec.marks[i].(int) <= rec.marks[i-1].(int) {
			t.Errorf("marks out of order: %v", rec.marks)
			break
		}
	}
	if h := st.hellos[0]; h.MaxBatchEvents != 7 || h.Cluster != "c1" {
		t.Errorf("hello = %v, want cluster c1 and max_batch_events 7", h)
	}
	if len(st.heartbeats) == 0 {
		t.Fatal("no heartbeat")
	}
	if h := st.heartbeats[0]; h.File != "audit.log" || h.Offset != 42 || h.Sent == nil {
		t.Errorf("heartbeat = %v, want the Status fields and a send time", h)
	}
	stats := s.Stats()
	if stats.EventsAcked != uint64(len(want)-1) || stats.LossesAcked != 1 || stats.UnackedEvents != 0 {
		t.Errorf("Stats = %+v, want %d events and 1 loss acknowledged, none unacked", stats, len(want)-1)
	}
}

func TestReconnectResendsUnacked(t *testing.T) {
	first := newStub(true) // receives but never acknowledges
	addr, stop := serve(t, "127.0.0.1:0", first)
	rec := &recorder{}
	s := newSender(t, addr, rec, func(c *Config) { c.MaxBatchEvents = 2 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := start(s, ctx)

	for i := range 3 {
		if err := s.Enqueue(ctx, events(fmt.Sprint(i), 2), nil, i); err != nil {
			t.Fatal(err)
		}
	}
	first.wait(t, "3 batches at the first server", func() bool { return len(first.events) == 6 })
	if m := rec.last(); m != nil {
		t.Fatalf("mark %v acknowledged by a server that acknowledges nothing", m)
	}
	stop()

	second := newStub(false)
	serve(t, addr, second) // the aggregator restarts on the same address
	second.wait(t, "re-sent batches", func() bool { return len(second.events) == 6 })
	if err := s.Enqueue(ctx, events("after", 1), nil, 3); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	second.mu.Lock()
	defer second.mu.Unlock()
	want := []string{"0-0", "0-1", "1-0", "1-1", "2-0", "2-1", "after-0"}
	if diff := cmp.Diff(want, second.events); diff != "" {
		t.Errorf("events at the restarted aggregator (-want +got):\n%s", diff)
	}
	if len(second.violations) > 0 {
		t.Errorf("protocol violations: %v", second.violations)
	}
	if got := rec.last(); got != 3 {
		t.Errorf("last acknowledged mark = %v, want 3", got)
	}
	if r := s.Stats().Reconnects; r != 1 {
		t.Errorf("Reconnects = %d, want 1", r)
	}
}

func TestBoundedUnacked(t *testing.T) {
	st := newStub(true)
	addr, _ := serve(t, "127.0.0.1:0", st)
	s := newSender(t, addr, &recorder{}, func(c *Config) { c.MaxBatchEvents = 1; c.MaxUnacked = 2 })
	ctx, cancel := context.WithCancel(context.Background())
	wait := start(s, ctx)
	for i := range 2 {
		if err := s.Enqueue(ctx, events(fmt.Sprint(i), 1), nil, i); err != nil {
			t.Fatal(err)
		}
	}
	st.wait(t, "2 batches", func() bool { return len(st.events) == 2 })
	full, stopWaiting := context.WithCancel(ctx)
	stopWaiting()
	if err := s.Enqueue(full, events("x", 1), nil, 2); !errors.Is(err, context.Canceled) {
		t.Errorf("Enqueue with %d batches unacknowledged = %v, want it to block until its context ends", 2, err)
	}
	cancel()
	if err := wait(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
}

func TestMarkAloneWhenIdle(t *testing.T) {
	rec := &recorder{}
	s := newSender(t, "127.0.0.1:1", rec, nil)
	if err := s.Enqueue(context.Background(), nil, nil, "pos"); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(); got != "pos" {
		t.Errorf("mark with nothing unacknowledged = %v, want reported at once", got)
	}
}

func TestGiveUp(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	s := newSender(t, addr, &recorder{}, func(c *Config) { c.GiveUpAfter = 200 * time.Millisecond })
	if err := s.Enqueue(context.Background(), events("a", 1), nil, 1); err != nil {
		t.Fatal(err)
	}
	err = s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("Run = %v, want a not reachable error", err)
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no target", Config{Credentials: insecure.NewCredentials(), Hello: &tokenwatchv1.Hello{}}, "no target"},
		{"no credentials", Config{Target: "x:1", Hello: &tokenwatchv1.Hello{}}, "no transport credentials"},
		{"no hello", Config{Target: "x:1", Credentials: insecure.NewCredentials()}, "no hello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

// TestBatchBytesBound: events that do not fit the byte bound together
// travel in several batches, each within the bound unless alone.
func TestBatchBytesBound(t *testing.T) {
	st := newStub(false)
	addr, _ := serve(t, "127.0.0.1:0", st)
	rec := &recorder{}
	s := newSender(t, addr, rec, func(c *Config) { c.MaxBatchBytes = 300 })
	wait := start(s, context.Background())
	var evs []*tokenwatchv1.TokenEvent
	for i := range 10 {
		evs = append(evs, &tokenwatchv1.TokenEvent{AuditId: fmt.Sprint(i), RequestUri: strings.Repeat("x", 100)})
	}
	big := &tokenwatchv1.TokenEvent{AuditId: "big", RequestUri: strings.Repeat("y", 1000)}
	if err := s.Enqueue(context.Background(), evs[:5], nil, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(context.Background(), append([]*tokenwatchv1.TokenEvent{big}, evs[5:]...), nil, 2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	want := []string{"0", "1", "2", "3", "4", "big", "5", "6", "7", "8", "9"}
	if diff := cmp.Diff(want, st.events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if n := len(st.seqs[0]); n < 5 {
		t.Errorf("%d batches for 11 events of ~110 bytes under a 300-byte bound, want at least 5", n)
	}
	if got := rec.last(); got != 2 {
		t.Errorf("last mark = %v, want 2", got)
	}
}

// throttler plays an aggregator that holds its agent back the way the rate
// limit does: it welcomes a stream, reads one batch and then stops reading,
// so the agent's next Send blocks on flow control. A held stream ends when
// release is called (with Unavailable, as a stopping aggregator ends it) or
// its context ends. Once acking is set, streams are served normally.
type throttler struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer

	changes
	acking  bool
	held    int // streams that reached their hold, ever
	events  map[string]bool
	release chan struct{}
}

func newThrottler() *throttler {
	return &throttler{events: map[string]bool{}, release: make(chan struct{}), changes: newChanges()}
}

// endHeld ends the streams that are held now, and serves later ones normally
// when ack is set.
func (th *throttler) endHeld(ack bool) {
	th.mu.Lock()
	defer th.mu.Unlock()
	close(th.release)
	th.release = make(chan struct{})
	th.acking = th.acking || ack
}

func (th *throttler) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: &tokenwatchv1.Welcome{Cluster: first.GetHello().GetCluster()}}}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		b := req.GetBatch()
		if b == nil {
			continue
		}
		th.mu.Lock()
		for _, e := range b.Events {
			th.events[e.AuditId] = true
		}
		acking, release := th.acking, th.release
		if !acking {
			th.held++
		}
		th.notifyLocked()
		th.mu.Unlock()
		if !acking {
			// Hold: read nothing more (no acknowledgement either).
			select {
			case <-release:
				return status.Error(codes.Unavailable, "aggregator stopping")
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}}); err != nil {
			return err
		}
	}
}

// serveSmallWindows is serve with fixed 64 KiB flow-control windows (no
// dynamic growth), so a server that stops reading blocks its client's Send
// after little data.
func serveSmallWindows(t *testing.T, addr string, svc tokenwatchv1.AuditStreamServiceServer) func() {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

// bigEvents returns n events of about 100 KB each: a few fill a batch and
// overrun the flow-control windows.
func bigEvents(prefix string, n int) []*tokenwatchv1.TokenEvent {
	evs := events(prefix, n)
	for _, e := range evs {
		e.RequestUri = strings.Repeat("u", 100<<10)
	}
	return evs
}

// TestSessionEndsWhileSendBlocked is issue 12's wedge: the aggregator holds
// the agent back (its Send blocked on flow control, its receiver waiting for
// an acknowledgement) and then goes away. Every time, the session must end,
// the sender reconnect and deliver everything; and a sender whose context
// ends while a stalled aggregator holds it must return.
func TestSessionEndsWhileSendBlocked(t *testing.T) {
	const rounds = 5
	tests := []struct {
		name string
		// end ends the held stream of round i; last says the next stream
		// is to be served normally.
		end func(t *testing.T, th *throttler, addr string, stop func(), last bool) (newStop func())
	}{
		{"aggregator killed", func(t *testing.T, th *throttler, addr string, stop func(), last bool) func() {
			stop() // closes the connection, as a SIGKILL does
			if last {
				th.endHeld(true)
			}
			return serveSmallWindows(t, addr, th)
		}},
		{"aggregator ends the stream", func(t *testing.T, th *throttler, addr string, stop func(), last bool) func() {
			th.endHeld(last) // Unavailable, as a stopping aggregator answers
			return stop
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := lis.Addr().String()
			lis.Close()
			th := newThrottler()
			stop := serveSmallWindows(t, addr, th)
			rec := &recorder{}
			s := newSender(t, addr, rec, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wait := start(s, ctx)
			evs := bigEvents("e", 40) // about 4 MiB: 4 batches
			if err := s.Enqueue(ctx, evs, nil, "end"); err != nil {
				t.Fatal(err)
			}
			for i := range rounds {
				th.wait(t, fmt.Sprintf("stream %d held", i+1), func() bool { return th.held > i })
				stop = tt.end(t, th, addr, stop, i == rounds-1)
			}
			th.wait(t, "every event delivered after the last restart", func() bool { return len(th.events) == len(evs) })
			s.Close()
			if err := wait(); err != nil {
				t.Fatalf("Run = %v, want nil after Close", err)
			}
			if got := rec.last(); got != "end" {
				t.Errorf("last acknowledged mark = %v, want end", got)
			}
			if r := s.Stats().Reconnects; r < rounds {
				t.Errorf("Reconnects = %d, want at least %d", r, rounds)
			}
			stop()
		})
	}

	t.Run("stop while stalled", func(t *testing.T) {
		for i := range rounds {
			th := newThrottler()
			addr, stop := serveWith(t, th)
			s := newSender(t, addr, &recorder{}, nil)
			ctx, cancel := context.WithCancel(context.Background())
			wait := start(s, ctx)
			if err := s.Enqueue(ctx, bigEvents("e", 40), nil, "end"); err != nil {
				t.Fatal(err)
			}
			th.wait(t, "stream held", func() bool { return th.held > 0 })
			cancel() // the agent is told to stop; the aggregator answers nothing
			errc := make(chan error, 1)
			go func() { errc <- wait() }()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("round %d: Run = %v, want context.Canceled", i, err)
				}
			case <-time.After(20 * time.Second): // a failure bound, not a measurement
				t.Fatalf("round %d: Run did not return after its context ended (the session is wedged)", i)
			}
			stop()
		}
	})
}

// serveWith serves svc with small windows on a fresh loopback port.
func serveWith(t *testing.T, svc tokenwatchv1.AuditStreamServiceServer) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr, serveSmallWindows(t, addr, svc)
}
