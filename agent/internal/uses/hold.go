package uses

import (
	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
)

// A line's use or count must reach the aggregator in the batch that
// carries its block's mark, or in one after it: then it is acknowledged
// exactly when the checkpoint passes the line, and an agent restarted from
// the checkpoint never counts it again. A block's own matches travel with
// its items (Block). A lookback search finds lines of blocks read before
// its watch arrived, which are queued already, except possibly the last
// block read: the pipeline calls Block, then queues the block's items,
// which may wait for room in the sender meanwhile. Uses and counts of that
// block's lines are held until Queued (or Acked) says its items are
// queued; at a stop before, they are dropped (TakeCounts): the checkpoint
// is before the block, which a restart reads again.

// heldItems are the lookback uses and counts of lines of the block with
// ticket, held until its items are queued.
type heldItems struct {
	ticket uint64
	it     sender.Items
}

// Queued notes that the pipeline queued the items of the block with
// ticket (and of those before it): the lookback uses and counts of their
// lines may go on their own.
func (t *Tracker) Queued(ticket uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queuedTo(ticket)
}

// queuedTo notes that the blocks up to ticket are queued and wakes Run to
// send what they release. Called with mu held.
func (t *Tracker) queuedTo(ticket uint64) {
	if ticket <= t.queued {
		return
	}
	t.queued = ticket
	if len(t.later) > 0 && t.later[0].ticket <= ticket {
		select {
		case t.work <- struct{}{}:
		default:
		}
	}
}

// released takes the held items of the blocks queued since, merged.
// Called with mu held.
func (t *Tracker) released() sender.Items {
	var it sender.Items
	n := 0
	for n < len(t.later) && t.later[n].ticket <= t.queued {
		it.Uses = append(it.Uses, t.later[n].it.Uses...)
		it.Counts = append(it.Counts, t.later[n].it.Counts...)
		n++
	}
	t.later = t.later[n:]
	return it
}

// reportFound decides the lookback matches found by jobs (in reading
// order) and returns the uses and counts that may be queued now; those of
// the last block read, while its items are not queued, are held. Called
// with mu held.
func (t *Tracker) reportFound(jobs []*job, found []reread) sender.Items {
	var now, held sender.Items
	dst := &now
	pending := t.ticket > t.queued
	for _, r := range found {
		var kinds linematch.Kind
		for _, j := range jobs {
			if j.has(r.block) {
				kinds |= t.classify(j, r)
			}
		}
		if kinds == 0 {
			continue
		}
		if dst == &now && pending && r.block.File == t.lastBlock.File && r.block.Offset == t.lastBlock.Offset {
			now.Counts = t.rep.take() // the last block's lines come last
			dst = &held
		}
		t.lbHits++
		t.fillOrigin(r)
		if u := t.report(r.e, kinds, true); u != nil {
			dst.Uses = append(dst.Uses, u)
		}
	}
	if dst == &now {
		now.Counts = t.rep.take()
		return now
	}
	held.Counts = t.rep.take()
	if len(held.Uses)+len(held.Counts) > 0 {
		t.later = append(t.later, heldItems{ticket: t.ticket, it: held})
	}
	return now
}

// dropUnqueued drops the held items of blocks never queued and counts the
// uses they held. Called with mu held.
func (t *Tracker) dropUnqueued() {
	for _, h := range t.later {
		t.unqueued += uint64(len(h.it.Uses))
		for _, c := range h.it.Counts {
			t.unqueued += c.Uses
		}
	}
	t.later = nil
}
