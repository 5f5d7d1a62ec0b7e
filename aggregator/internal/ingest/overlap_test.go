package ingest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// overlapProcessor holds the batch with audit ID hold in Process until the
// event with audit ID next has been screened, and fails the batch with
// audit ID fail.
type overlapProcessor struct {
	hold, next, fail string
	screened         chan struct{}
	once             sync.Once

	mu        sync.Mutex
	processed []string // first audit ID of each processed batch
	timedOut  bool
}

func (o *overlapProcessor) Screen(e *tokenwatchv1.TokenEvent) int {
	if e.GetAuditId() == o.next {
		o.once.Do(func() { close(o.screened) })
	}
	return pipeline.Keep
}

func (o *overlapProcessor) Process(_ context.Context, b pipeline.Batch) (pipeline.Result, error) {
	id := b.Events[0].AuditID
	if id == o.hold {
		select {
		case <-o.screened:
		case <-time.After(10 * time.Second): // fail rather than hang
			o.mu.Lock()
			o.timedOut = true
			o.mu.Unlock()
		}
	}
	if id == o.fail {
		return pipeline.Result{}, errors.New("disk full")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.processed = append(o.processed, id)
	return pipeline.Result{}, nil
}

func (o *overlapProcessor) Heard(string, string, time.Time) {}

// TestStreamReceivesWhileProcessing: the next batch is received and
// screened while the previous one is still in Process (its commit), and
// acks still follow seq order.
func TestStreamReceivesWhileProcessing(t *testing.T) {
	p := &overlapProcessor{hold: "a1", next: "a2", screened: make(chan struct{})}
	h := insecureHarness(t, p)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)
	send(t, st, batchMsg(1, "a1"), batchMsg(2, "a2"), batchMsg(3, "a3"))
	for _, want := range []uint64{1, 2, 3} {
		if got := recv(t, st).GetAck().GetSeq(); got != want {
			t.Fatalf("ack = %d, want %d", got, want)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timedOut {
		t.Error("batch 2 was not screened while batch 1 was in Process")
	}
	if len(p.processed) != 3 || p.processed[0] != "a1" || p.processed[1] != "a2" || p.processed[2] != "a3" {
		t.Errorf("processed %q, want [a1 a2 a3]", p.processed)
	}
}

// TestStreamFailureStopsLaterBatches: when a batch is not recorded, neither
// it nor a later batch already received is acknowledged or processed, and
// the stream ends with Unavailable (here when the agent closes its side).
func TestStreamFailureStopsLaterBatches(t *testing.T) {
	p := &overlapProcessor{hold: "a2", next: "a3", fail: "a2", screened: make(chan struct{})}
	h := insecureHarness(t, p)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)
	send(t, st, batchMsg(1, "a1"), batchMsg(2, "a2"), batchMsg(3, "a3"))
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, st).GetAck().GetSeq(); got != 1 {
		t.Fatalf("ack = %d, want 1", got)
	}
	r, err := st.Recv()
	if err == nil {
		t.Fatalf("got %v after ack 1, want the stream to end with Unavailable", r)
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("stream ended with %v, want Unavailable", code)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timedOut {
		t.Error("batch 3 was not screened while batch 2 was in Process")
	}
	if len(p.processed) != 1 || p.processed[0] != "a1" {
		t.Errorf("processed %q, want [a1]", p.processed)
	}
}
