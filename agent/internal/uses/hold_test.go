package uses

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// queuedUses returns the audit IDs of the uses queued, and the uses
// counted, in items.
func queuedUses(items []sender.Items) ([]string, uint64) {
	var ids []string
	var counted uint64
	for _, it := range items {
		ids = append(ids, useIDs(it)...)
		for _, c := range it.Counts {
			counted += c.Uses
		}
	}
	return ids, counted
}

// TestLookbackWaitsForItsBlock: a lookback search that finds lines of the
// block whose items the pipeline has not queued yet (Block returned; the
// sender is full, say) holds their uses and counts until that block is
// queued. Sent before, they could be acknowledged while the checkpoint is
// still before the block: an agent stopped then reads the block again
// after its restart and counts its lines twice.
func TestLookbackWaitsForItsBlock(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	log := newLog(t)
	b1 := log.block(lines(req{id: "queued1", jti: jtiA, ip: "10.0.0.1"}, req{id: "queued2", jti: jtiA, ip: "10.0.0.1"}))
	_, t1, err := tr.Block(context.Background(), b1, false)
	if err != nil {
		t.Fatal(err)
	}
	tr.Queued(t1)
	b2 := log.block(lines(req{id: "pending1", jti: jtiA, ip: "10.0.0.2"}, req{id: "pending2", jti: jtiA, ip: "10.0.0.2"}))
	_, t2, err := tr.Block(context.Background(), b2, false)
	if err != nil {
		t.Fatal(err)
	}
	// b2's items are not queued yet when the watch arrives.
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	q.wait(t, "b1's lookback use and count", func(items []sender.Items) bool {
		_, counted := queuedUses(items)
		return counted == 1
	})
	left, err := tr.Drain(context.Background()) // the search is done
	if err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	ids, counted := queuedUses(q.items)
	q.mu.Unlock()
	if !cmp.Equal(ids, []string{"queued1"}) || counted != 1 || len(left.Uses)+len(left.Counts) != 0 {
		t.Fatalf("before b2 is queued: queued uses %v and %d counted, Drain %v; want queued1 and 1 (b1's lines only)", ids, counted, left)
	}
	tr.Queued(t2)
	items := q.wait(t, "b2's lookback use and count", func(items []sender.Items) bool {
		_, counted := queuedUses(items)
		return counted == 2
	})
	if ids, _ := queuedUses(items); !cmp.Equal(ids, []string{"queued1", "pending1"}) {
		t.Errorf("lookback uses = %v, want queued1 pending1", ids)
	}
}

// TestLookbackOfUnqueuedBlockDropped: when the agent stops before the last
// block's items were queued, the lookback uses and counts of its lines are
// dropped (the checkpoint is before it: a restart reads it again), those
// of queued blocks are returned.
func TestLookbackOfUnqueuedBlockDropped(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	log := newLog(t)
	_, t1, err := tr.Block(context.Background(), log.block(lines(req{id: "queued", jti: jtiA, ip: "10.0.0.1"})), false)
	if err != nil {
		t.Fatal(err)
	}
	tr.Queued(t1)
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "never", jti: jtiA, ip: "10.0.0.2"})), false); err != nil {
		t.Fatal(err)
	}
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	q.wait(t, "the queued block's lookback use", func(items []sender.Items) bool { return len(items) > 0 })
	if _, err := tr.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if it := tr.TakeCounts(); len(it.Uses)+len(it.Counts) != 0 {
		t.Errorf("TakeCounts = %v at a stop, want nothing (the block was never queued)", it)
	}
	q.mu.Lock()
	ids, _ := queuedUses(q.items)
	q.mu.Unlock()
	if !cmp.Equal(ids, []string{"queued"}) {
		t.Errorf("queued uses %v, want queued only", ids)
	}
	if st := tr.Stats(); st.LookbackUnqueued != 1 {
		t.Errorf("Stats.LookbackUnqueued = %d, want 1", st.LookbackUnqueued)
	}
}
