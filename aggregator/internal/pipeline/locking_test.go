package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
)

// TestTickWithNothingDueLeavesBatchesAlone: a tick with no due pending does
// not take the write lock that batches hold for reading, so it never makes
// them queue behind it; a tick with a due pending does.
func TestTickWithNothingDueLeavesBatchesAlone(t *testing.T) {
	f := newFixture(t, config.Default())
	tickDone := func() chan error {
		done := make(chan error, 1)
		go func() {
			_, err := f.p.Tick(context.Background())
			done <- err
		}()
		return done
	}

	// A batch in flight (its read lock held): a tick with nothing due
	// completes.
	f.p.tick.RLock()
	if err := <-tickDone(); err != nil {
		f.p.tick.RUnlock()
		t.Fatalf("Tick: %v", err)
	}
	f.p.tick.RUnlock()

	// With a due pending, the tick waits for the batch in flight.
	f.process(t, batch("prod", "cp-1", received("alice", "a1", rrt1)))
	f.clk.Add(2 * time.Second)
	f.p.tick.RLock()
	done := tickDone()
	for {
		// Once the tick is parked on the write lock, a further reader
		// cannot get in (writer preference), which TryRLock reports.
		if !f.p.tick.TryRLock() {
			break
		}
		f.p.tick.RUnlock()
		select {
		case err := <-done:
			t.Fatalf("Tick with a due pending returned (%v) while a batch held the read lock", err)
		default:
		}
		time.Sleep(time.Millisecond) // polling for the tick to park; no timing asserted
	}
	f.p.tick.RUnlock()
	if err := <-done; err != nil {
		t.Fatalf("Tick: %v", err)
	}
	if got := len(f.outbox(t)); got != 1 {
		t.Errorf("outbox holds %d records after the due tick, want 1", got)
	}
}

// TestAgentLocksForgotten: an agent's lock lives while its batches do.
func TestAgentLocksForgotten(t *testing.T) {
	f := newFixture(t, config.Default())
	for i, node := range []string{"cp-1", "cp-2", "cp-3"} {
		f.process(t, batch("prod", node, completed("alice", "c"+string(rune('1'+i)), rrt1, 201)))
	}
	f.p.agentMu.Lock()
	n := len(f.p.agents)
	f.p.agentMu.Unlock()
	if n != 0 {
		t.Errorf("%d agent locks kept after their batches ended, want 0", n)
	}
}
