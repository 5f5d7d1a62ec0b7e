package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"

	"google.golang.org/grpc"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// gate is a lineage aggregator that acknowledges nothing until told:
// ackTo acknowledges the batches received up to a sequence number, open
// every batch received then and later. It counts every use received,
// by audit ID, over all streams, as the summary totals would.
type gate struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer

	changes
	ackUpTo uint64 // on the current stream; ^0 once open
	last    uint64 // the newest batch received on the current stream
	uses    map[string]int
	order   []string // uses in arrival order
}

func newGate() *gate { return &gate{uses: map[string]int{}, changes: newChanges()} }

// ackTo acknowledges the current stream's batches up to seq.
func (g *gate) ackTo(seq uint64) {
	g.mu.Lock()
	g.ackUpTo = max(g.ackUpTo, seq)
	g.notifyLocked()
	g.mu.Unlock()
}

// open acknowledges every batch from now on.
func (g *gate) open() { g.ackTo(^uint64(0)) }

func (g *gate) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	w := &tokenwatchv1.Welcome{Cluster: first.GetHello().GetCluster(), Lineage: &tokenwatchv1.LineageSettings{LookbackMs: 1000}}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	g.mu.Lock()
	g.last = 0
	g.mu.Unlock()
	recvErr := make(chan error, 1)
	go func() { recvErr <- g.receive(stream) }()
	var acked uint64
	for {
		g.mu.Lock()
		to, ch := min(g.ackUpTo, g.last), g.changed
		g.mu.Unlock()
		if to > acked {
			if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: to}}}); err != nil {
				return err
			}
			acked = to
			continue
		}
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ch:
		}
	}
}

// receive records the batches of stream until it ends.
func (g *gate) receive(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		b := req.GetBatch()
		if b == nil {
			continue
		}
		g.mu.Lock()
		g.last = b.Seq
		for _, u := range b.Uses {
			id := u.GetEvent().GetAuditId()
			g.uses[id]++
			g.order = append(g.order, id)
		}
		g.notifyLocked()
		g.mu.Unlock()
	}
}

func serveGate(t *testing.T, g *gate) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, g)
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

// block is a block's items: n lineage uses named prefix-0, prefix-1, ...
func block(prefix string, n int) Items {
	var it Items
	for i := range n {
		it.Uses = append(it.Uses, &tokenwatchv1.LineageEvent{Event: &tokenwatchv1.TokenEvent{AuditId: fmt.Sprintf("%s-%d", prefix, i)}})
	}
	return it
}

// TestBlockQueuedWhole: an agent stopped while a block's items wait for
// room in the sender queues none of them, so the checkpoint (the newest
// acknowledged mark) and what the aggregator received agree: an agent
// restarted from that checkpoint reads the block again and the aggregator
// receives each of its uses once. A block too large for the whole window
// is the documented exception: it is queued as room frees.
func TestBlockQueuedWhole(t *testing.T) {
	tests := []struct {
		name string
		n    int // uses in block B: 6 take 3 batches, the whole window
		// stop ends the agent's context on the wait-th time EnqueueItems
		// waits for room (0: before the call); it may acknowledge batches.
		stop      func(g *gate, wait int, cancel context.CancelFunc)
		wantTwice []string // uses that a restart sends again
	}{
		{"stopped before the call", 6, func(_ *gate, wait int, cancel context.CancelFunc) {
			if wait == 0 {
				cancel()
			}
		}, nil},
		{"stopped while waiting for room", 6, func(_ *gate, wait int, cancel context.CancelFunc) {
			if wait == 1 {
				cancel()
			}
		}, nil},
		{"stopped after an acknowledgement left too little room", 6, func(g *gate, wait int, cancel context.CancelFunc) {
			switch wait {
			case 1:
				g.ackTo(1) // block A1's batch: 2 slots free, 3 needed
			case 2:
				cancel()
			}
		}, nil},
		{"block larger than the window", 8, func(_ *gate, wait int, cancel context.CancelFunc) {
			if wait == 1 {
				cancel()
			}
		}, []string{"B-0", "B-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGate()
			addr := serveGate(t, g)
			mod := func(c *Config) {
				c.Lineage = &lineageLog{}
				c.MaxBatchEvents = 2
				c.MaxUnacked = 3
			}
			rec := &recorder{}
			s := newSender(t, addr, rec, mod)
			stopped, cancel := context.WithCancel(context.Background())
			defer cancel()
			waits := 0
			s.onWait = func() {
				waits++
				tt.stop(g, waits, cancel)
			}
			wait := start(s, context.Background())

			// Blocks A1 and A2 are sent and held unacknowledged, one
			// batch each: one batch slot is left.
			for _, a := range []string{"A1", "A2"} {
				if err := s.EnqueueItems(context.Background(), block(a, 1), a); err != nil {
					t.Fatal(err)
				}
				g.wait(t, "block "+a+" at the aggregator", func() bool { return g.uses[a+"-0"] == 1 })
			}
			tt.stop(g, 0, cancel)
			if err := s.EnqueueItems(stopped, block("B", tt.n), "B"); !errors.Is(err, context.Canceled) {
				t.Fatalf("EnqueueItems stopped while waiting for room = %v, want context.Canceled", err)
			}
			// The stopping agent delivers what it holds.
			g.open()
			s.Close()
			if err := wait(); err != nil {
				t.Fatalf("Run = %v, want nil after Close", err)
			}
			if got := rec.last(); got != "A2" {
				t.Fatalf("checkpoint after the stop = %v, want A2 (block B was not queued whole)", got)
			}
			g.mu.Lock()
			before := append([]string(nil), g.order...)
			g.mu.Unlock()

			// The agent restarts from checkpoint A2: it reads block B again.
			rec2 := &recorder{}
			s2 := newSender(t, addr, rec2, mod)
			wait2 := start(s2, context.Background())
			if err := s2.EnqueueItems(context.Background(), block("B", tt.n), "B"); err != nil {
				t.Fatal(err)
			}
			s2.Close()
			if err := wait2(); err != nil {
				t.Fatalf("Run after the restart = %v, want nil after Close", err)
			}
			if got := rec2.last(); got != "B" {
				t.Errorf("checkpoint after the restart = %v, want B", got)
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			for _, id := range append([]string{"A1-0", "A2-0"}, useIDs(block("B", tt.n))...) {
				want := 1
				if slices.Contains(tt.wantTwice, id) {
					want = 2
				}
				if got := g.uses[id]; got != want {
					t.Errorf("use %s received %d times, want %d (before the restart: %q)", id, got, want, before)
				}
			}
		})
	}
}

// useIDs names the uses of it.
func useIDs(it Items) []string {
	var out []string
	for _, u := range it.Uses {
		out = append(out, u.GetEvent().GetAuditId())
	}
	return out
}
