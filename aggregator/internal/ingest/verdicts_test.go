package ingest

import (
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// TestMergeKeepsVerdicts: batches processed together keep one verdict per
// event, in order.
func TestMergeKeepsVerdicts(t *testing.T) {
	batch := func(ids ...string) *prepared {
		p := &prepared{batches: 1}
		for _, id := range ids {
			p.batch.Events = append(p.batch.Events, &audit.Event{AuditID: id})
			p.batch.Verdicts = append(p.batch.Verdicts, rule.Verdict{Match: true, Mismatch: id})
		}
		return p
	}
	got := merge(merge(batch("a", "b"), batch()), batch("c")).batch
	if len(got.Events) != 3 || len(got.Verdicts) != 3 {
		t.Fatalf("merged %d events, %d verdicts; want 3 and 3", len(got.Events), len(got.Verdicts))
	}
	for i, e := range got.Events {
		if got.Verdicts[i].Mismatch != e.AuditID {
			t.Errorf("verdict %d is %q's, want %q's", i, got.Verdicts[i].Mismatch, e.AuditID)
		}
	}
}
