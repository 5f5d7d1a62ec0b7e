package ingest

import (
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// countingScreener is a recorder that judges every event with one verdict
// and counts its judgements.
type countingScreener struct {
	recorder
	mu      sync.Mutex
	screens int
}

func (c *countingScreener) Screen(s *rule.Subject) rule.Verdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.screens++
	return rule.Verdict{Match: true, Mismatch: "by the codec"}
}

func (c *countingScreener) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.screens
}

var _ Screener = (*countingScreener)(nil)

// TestStreamJudgesEachEventOnce: behind the guard, with the screening
// codec, each event is judged once (by the codec) and its verdict reaches
// Process; the guard still applies its limits to the batches.
func TestStreamJudgesEachEventOnce(t *testing.T) {
	p := &countingScreener{}
	s := New(Options{Processor: p, Insecure: true})
	cfg := guard.DefaultConfig()
	cfg.MaxEventsPerBatch = 3
	opts := append(s.ServerOptions(), guard.ServerOptions(cfg, nil)...)
	h := start(t, s, opts, insecure.NewCredentials())
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st) // welcome
	send(t, st, batchMsg(1, "a", "b", "c"))
	if ack := recv(t, st).GetAck(); ack.GetSeq() != 1 {
		t.Fatalf("got %v, want the ack of 1", ack)
	}
	if got := p.count(); got != 3 {
		t.Errorf("Screen called %d times for 3 events, want 3", got)
	}
	batches, _ := p.snapshot()
	want := rule.Verdict{Match: true, Mismatch: "by the codec"}
	if len(batches) != 1 || len(batches[0].Verdicts) != 3 {
		t.Fatalf("Process got %v, want one batch with 3 verdicts", batches)
	}
	for i, v := range batches[0].Verdicts {
		if v != want {
			t.Errorf("verdict %d = %+v, want %+v", i, v, want)
		}
	}
	send(t, st, batchMsg(2, "d", "e", "f", "g"))
	if code := recvErr(t, st); code != codes.ResourceExhausted {
		t.Errorf("a batch over the guard's limit ended the stream with %v, want %v", code, codes.ResourceExhausted)
	}
}
