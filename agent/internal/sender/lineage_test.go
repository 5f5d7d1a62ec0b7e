package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// lineageStub is an aggregator that answers every batch with a WatchUpdate
// naming the batch's events, then the batch's Ack, as a lineage aggregator
// does; without settings its Welcome carries none and it pushes nothing.
type lineageStub struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	settings *tokenwatchv1.LineageSettings

	mu      sync.Mutex
	hellos  []*tokenwatchv1.Hello
	batches []*tokenwatchv1.Batch
	changed chan struct{}
}

func newLineageStub(settings *tokenwatchv1.LineageSettings) *lineageStub {
	return &lineageStub{settings: settings, changed: make(chan struct{})}
}

func (st *lineageStub) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	st.mu.Lock()
	st.hellos = append(st.hellos, first.GetHello())
	st.mu.Unlock()
	w := &tokenwatchv1.Welcome{Cluster: first.GetHello().GetCluster(), Lineage: st.settings}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	if st.settings != nil {
		reset := &tokenwatchv1.WatchUpdate{Reset_: true}
		if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: reset}}); err != nil {
			return err
		}
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b := req.GetBatch()
		if b == nil {
			continue
		}
		st.mu.Lock()
		st.batches = append(st.batches, b)
		close(st.changed)
		st.changed = make(chan struct{})
		st.mu.Unlock()
		if err := st.answer(stream, b); err != nil {
			return err
		}
	}
}

// answer sends b's watches (one per event), then b's Ack.
func (st *lineageStub) answer(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse], b *tokenwatchv1.Batch) error {
	if st.settings != nil && len(b.Events) > 0 {
		u := &tokenwatchv1.WatchUpdate{}
		for _, e := range b.Events {
			u.Add = append(u.Add, &tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: e.AuditId})
		}
		if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: u}}); err != nil {
			return err
		}
	}
	return stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}})
}

// lineageLog records the lineage calls and the acknowledged marks in the
// order the sender makes them.
type lineageLog struct {
	mu  sync.Mutex
	log []string
}

func (l *lineageLog) add(s string) {
	l.mu.Lock()
	l.log = append(l.log, s)
	l.mu.Unlock()
}

func (l *lineageLog) Welcome(s *tokenwatchv1.LineageSettings) {
	if s == nil {
		l.add("welcome off")
		return
	}
	l.add(fmt.Sprintf("welcome lookback=%d", s.LookbackMs))
}

func (l *lineageLog) Watch(u *tokenwatchv1.WatchUpdate) {
	if u.Reset_ {
		l.add("reset")
	}
	for _, w := range u.Add {
		l.add("watch " + w.Key)
	}
}

func (l *lineageLog) onAck(m any) { l.add(fmt.Sprintf("ack %v", m)) }

func (l *lineageLog) entries() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.log...)
}

func serveLineage(t *testing.T, st *lineageStub) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
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
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

func lineageSender(t *testing.T, addr string, l *lineageLog) *Sender {
	t.Helper()
	return newSender(t, addr, &recorder{}, func(c *Config) {
		c.Lineage = l
		c.OnAck = l.onAck
		c.MaxBatchEvents = 1
	})
}

// TestLineageWatchesBeforeAck: the Hello declares lineage, the Welcome's
// settings reach Lineage first, and each batch's watches are applied
// before its acknowledgement moves the mark.
func TestLineageWatchesBeforeAck(t *testing.T) {
	st := newLineageStub(&tokenwatchv1.LineageSettings{LookbackMs: 120000})
	addr := serveLineage(t, st)
	l := &lineageLog{}
	s := lineageSender(t, addr, l)
	wait := start(s, context.Background())
	for i := range 3 {
		if err := s.Enqueue(context.Background(), events(fmt.Sprint(i), 1), nil, i); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	want := []string{"welcome lookback=120000", "reset", "watch 0-0", "ack 0", "watch 1-0", "ack 1", "watch 2-0", "ack 2"}
	if diff := cmp.Diff(want, l.entries()); diff != "" {
		t.Errorf("lineage calls and acks (-want +got):\n%s", diff)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if got := st.hellos[0].Features; !cmp.Equal(got, []string{FeatureLineage}) {
		t.Errorf("Hello.Features = %q, want [lineage]", got)
	}
}

// TestLineageUsesAndCounts: uses and counts travel in batches after the
// events, are acknowledged like them and move the mark.
func TestLineageUsesAndCounts(t *testing.T) {
	st := newLineageStub(&tokenwatchv1.LineageSettings{LookbackMs: 1000})
	addr := serveLineage(t, st)
	l := &lineageLog{}
	s := newSender(t, addr, &recorder{}, func(c *Config) { c.Lineage = l; c.OnAck = l.onAck })
	wait := start(s, context.Background())
	it := Items{
		Events: events("mint", 1),
		Uses:   []*tokenwatchv1.LineageEvent{{Event: &tokenwatchv1.TokenEvent{AuditId: "use"}}},
		Counts: []*tokenwatchv1.UseCount{{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: "j", Uses: 2}},
	}
	if err := s.EnqueueItems(context.Background(), it, "end"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(st.batches))
	}
	b := st.batches[0]
	if len(b.Events) != 1 || len(b.Uses) != 1 || len(b.Counts) != 1 || b.Uses[0].Event.AuditId != "use" || b.Counts[0].Uses != 2 {
		t.Errorf("batch = %v, want the mint, the use and the count", b)
	}
	stats := s.Stats()
	if stats.UsesAcked != 1 || stats.CountsAcked != 1 || stats.UsesSent != 1 || stats.CountsSent != 1 {
		t.Errorf("Stats = %+v, want one use and one count sent and acknowledged", stats)
	}
}

// TestLineageOffWithoutSettings: a Welcome without LineageSettings turns
// lineage off for the stream: Lineage hears so, and uses and counts are not
// sent (an older aggregator would not read them).
func TestLineageOffWithoutSettings(t *testing.T) {
	st := newLineageStub(nil)
	addr := serveLineage(t, st)
	l := &lineageLog{}
	s := lineageSender(t, addr, l)
	wait := start(s, context.Background())
	it := Items{
		Events: events("mint", 1),
		Uses:   []*tokenwatchv1.LineageEvent{{Event: &tokenwatchv1.TokenEvent{AuditId: "use"}}},
	}
	if err := s.EnqueueItems(context.Background(), it, "end"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if diff := cmp.Diff([]string{"welcome off", "ack end"}, l.entries()); diff != "" {
		t.Errorf("lineage calls and acks (-want +got):\n%s", diff)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, b := range st.batches {
		if len(b.Uses)+len(b.Counts) > 0 {
			t.Errorf("batch %d carries %d uses and %d counts on a stream without lineage", b.Seq, len(b.Uses), len(b.Counts))
		}
	}
	if s.Stats().UsesSent != 0 {
		t.Errorf("UsesSent = %d, want 0", s.Stats().UsesSent)
	}
}

// TestNoFeatureWithoutLineage: an agent without Lineage declares nothing.
func TestNoFeatureWithoutLineage(t *testing.T) {
	s := newSender(t, "127.0.0.1:1", &recorder{}, nil)
	if f := s.cfg.Hello.Features; len(f) != 0 {
		t.Errorf("Hello.Features = %q without Lineage, want none", f)
	}
}
