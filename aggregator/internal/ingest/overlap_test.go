package ingest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// overlapProcessor holds the batch holding audit ID hold in Process until
// the event with audit ID next has been screened, and fails the batch
// holding audit ID fail. Batches waiting together are processed as one, so
// it looks at every event of what it is given.
type overlapProcessor struct {
	hold, next, fail string
	screened         chan struct{}
	once             sync.Once

	mu        sync.Mutex
	processed []string // audit IDs of the processed events, in order
	timedOut  bool
}

// Screen sees the subject only: the events of these tests name their
// user after their audit ID (userBatch).
func (o *overlapProcessor) Screen(s *rule.Subject) rule.Verdict {
	if s.User == o.next {
		o.once.Do(func() { close(o.screened) })
	}
	return rule.Verdict{Match: true}
}

// userBatch is batchMsg of one event whose user is named after its audit ID.
func userBatch(seq uint64, id string) *tokenwatchv1.StreamRequest {
	m := batchMsg(seq, id)
	m.GetBatch().GetEvents()[0].User.Username = id
	return m
}

func (o *overlapProcessor) Process(_ context.Context, b pipeline.Batch) (pipeline.Result, error) {
	var ids []string
	for _, e := range b.Events {
		ids = append(ids, e.AuditID)
	}
	if slices.Contains(ids, o.hold) {
		select {
		case <-o.screened:
		case <-time.After(10 * time.Second): // fail rather than hang
			o.mu.Lock()
			o.timedOut = true
			o.mu.Unlock()
		}
	}
	if slices.Contains(ids, o.fail) {
		return pipeline.Result{}, errors.New("disk full")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.processed = append(o.processed, ids...)
	return pipeline.Result{}, nil
}

func (o *overlapProcessor) Heard(string, string, time.Time) {}

// TestStreamReceivesWhileProcessing: the next batch is received and
// screened while the previous one is still in Process (its commit), and
// the acks, cumulative, reach the last batch.
func TestStreamReceivesWhileProcessing(t *testing.T) {
	p := &overlapProcessor{hold: "a1", next: "a2", screened: make(chan struct{})}
	h := insecureHarness(t, p)
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st)
	send(t, st, userBatch(1, "a1"), userBatch(2, "a2"), userBatch(3, "a3"))
	for last := uint64(0); last != 3; {
		got := recv(t, st).GetAck().GetSeq()
		if got <= last || got > 3 {
			t.Fatalf("ack = %d after %d, want increasing up to 3", got, last)
		}
		last = got
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
	send(t, st, userBatch(1, "a1"))
	if got := recv(t, st).GetAck().GetSeq(); got != 1 {
		t.Fatalf("ack = %d, want 1", got)
	}
	send(t, st, userBatch(2, "a2"), userBatch(3, "a3"))
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
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
