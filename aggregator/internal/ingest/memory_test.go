package ingest

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// gate is a Processor that holds the batches of clusters named hog-* until
// open is closed and records the others.
type gate struct {
	open chan struct{}
	recorder
}

func (g *gate) Process(ctx context.Context, b pipeline.Batch) (pipeline.Result, error) {
	if strings.HasPrefix(b.Source.Cluster, "hog-") {
		<-g.open
	}
	return g.recorder.Process(ctx, b)
}

// bigBatch is a batch of n events of about size bytes each, every one kept.
func bigBatch(seq uint64, n, size int) *tokenwatchv1.StreamRequest {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "big-" + strconv.FormatUint(seq, 10) + "-" + strconv.Itoa(i)
	}
	m := batchMsg(seq, ids...)
	for _, e := range m.GetBatch().GetEvents() {
		e.UserAgent = strings.Repeat("x", size)
	}
	return m
}

// gauge reads a gauge or counter of reg by name (0 when absent).
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
		}
	}
	return 0
}

// TestStreamsShareAMemoryBudget: agents that keep sending large batches
// while their commits stall hold no more than the fleet-wide budget
// (before, each stream queued 16 batches whatever their size), and an agent
// with a small batch still gets through.
func TestStreamsShareAMemoryBudget(t *testing.T) {
	const (
		hogs      = 4
		perHog    = 24 // more than the receiver may run ahead
		budget    = 4 << 20
		events    = 64
		eventSize = 4000
	)
	reg := prometheus.NewRegistry()
	g := &gate{open: make(chan struct{})}
	srv := New(Options{Processor: g, Insecure: true, MaxBufferedBytes: budget, Registerer: reg})
	var queued atomic.Int64
	signal := make(chan struct{}, 1)
	srv.queued = func() {
		queued.Add(1)
		select {
		case signal <- struct{}{}:
		default:
		}
	}
	h := start(t, srv, srv.ServerOptions(), insecure.NewCredentials())

	// A queued batch holds at least its events' encoded bytes twice over
	// (decoded strings and the converted copy).
	var wireBytes int64
	for _, e := range bigBatch(1, events, eventSize).GetBatch().GetEvents() {
		wireBytes += int64(proto.Size(e))
	}
	perBatch := 2 * wireBytes
	bound := int64(budget + (hogs+1)*StreamShareBytes)

	var senders sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		close(g.open)
		cancel()
		senders.Wait()
	}()
	for i := range hogs {
		st, err := tokenwatchv1.NewAuditStreamServiceClient(h.conn).Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		send(t, st, hello("hog-"+strconv.Itoa(i), "n", false))
		if resp := recv(t, st); resp.GetWelcome() == nil {
			t.Fatalf("hog %d: got %v, want a Welcome", i, resp)
		}
		senders.Go(func() {
			for seq := uint64(1); seq <= perHog; seq++ {
				if st.Send(bigBatch(seq, events, eventSize)) != nil {
					return
				}
			}
		})
	}

	// Wait until the hogs are held back by the budget, failing as soon as
	// more is queued than the budget allows.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for gauge(t, reg, "tokenwatch_aggregator_buffer_waits_total") < hogs {
		if held := queued.Load() * perBatch; held > bound {
			t.Fatalf("%d batches of at least %d bytes queued (%d bytes), more than the budget allows (%d)", queued.Load(), perBatch, held, bound)
		}
		select {
		case <-signal:
		case <-tick.C:
		case <-ctx.Done():
		}
	}

	// A new agent with a small batch is admitted on its own share.
	small := h.stream(t)
	send(t, small, hello("small", "n", false), batchMsg(1, "small-1"))
	for {
		resp := recv(t, small)
		if resp.GetAck() != nil {
			break
		}
	}
	if held := (queued.Load() - 1) * perBatch; held > bound { // the small batch is one
		t.Fatalf("%d batches of at least %d bytes queued (%d bytes), more than the budget allows (%d)", queued.Load()-1, perBatch, held, bound)
	}
	if got := gauge(t, reg, "tokenwatch_aggregator_buffered_bytes"); got > float64(bound) {
		t.Errorf("buffered bytes = %v, want <= %d", got, bound)
	}
	if err := small.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// TestStreamBudget checks the accounting: a stream's own share is free,
// the shared budget is bounded per cluster, releases settle, close returns
// what is left.
func TestStreamBudget(t *testing.T) {
	ctx := context.Background()
	b := newBudget(4 << 20) // per cluster: 1 MiB
	a1, a2, other := b.stream("a"), b.stream("a"), b.stream("b")

	// Within the own share: nothing shared is taken.
	n, err := a1.acquire(ctx, StreamShareBytes)
	if err != nil || n != StreamShareBytes {
		t.Fatalf("acquire(own share) = %d, %v", n, err)
	}
	if !b.shared.TryAcquire(4 << 20) {
		t.Fatal("own share took from the shared budget")
	}
	b.shared.Release(4 << 20)

	// Charges are capped at the per-cluster share.
	if n, _ := a2.acquire(ctx, 8<<20); n != 1<<20 {
		t.Fatalf("acquire(8 MiB) charged %d, want the per-cluster share %d", n, 1<<20)
	}
	// Cluster a has spent its share: a1 waits for it, cluster b does not.
	if a1.c.sem.TryAcquire(StreamShareBytes + 1) {
		t.Error("cluster a may take more than its share of the budget")
	}
	if _, err := other.acquire(ctx, 1<<20); err != nil {
		t.Errorf("cluster b: %v", err)
	}
	a2.release(1 << 20)
	if n, err := a1.acquire(ctx, 1<<20-StreamShareBytes); err != nil || n != 1<<20-StreamShareBytes {
		t.Fatalf("after a release: acquire = %d, %v", n, err)
	}
	for _, s := range []*streamBudget{a1, a2, other} {
		s.close()
	}
	if got := b.heldBytes(); got != 0 {
		t.Errorf("held after close = %d, want 0", got)
	}
	if !b.shared.TryAcquire(4 << 20) {
		t.Error("close did not return the shared budget")
	}
	if len(b.clusters) != 0 {
		t.Errorf("clusters after close: %v", b.clusters)
	}
}
