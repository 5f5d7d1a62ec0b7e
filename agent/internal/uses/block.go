package uses

import (
	"bytes"
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Block matches b's lines against the watch set and indexes b for the
// lookback (one entry: its location and read time). It returns the uses
// and counts to queue with b's token creates and b's ticket, which the
// block's mark carries to Acked once it is acknowledged. mints says b holds
// token creates: b and the blocks after it are then pinned in the index
// until that acknowledgement. Block waits, until ctx ends, while pinned
// blocks leave no room for b. It is called from one goroutine (the
// follower's).
func (t *Tracker) Block(ctx context.Context, b follow.Block, mints bool) (sender.Items, uint64, error) {
	return t.BlockMarked(ctx, b, mints, nil)
}

// BlockMarked is Block for a block the pre-filter has just read: mk is its
// marks of b (prefilter.Filter.Marks), which spare the matcher reading b
// again for them; nil, none.
func (t *Tracker) BlockMarked(ctx context.Context, b follow.Block, mints bool, mk *prefilter.Marks) (sender.Items, uint64, error) {
	if err := t.waitRoom(ctx, len(b.Data)); err != nil {
		return sender.Items{}, 0, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ticket++
	ticket := t.ticket
	if !t.on {
		t.mint = false
		return sender.Items{}, ticket, nil
	}
	now := t.cfg.Now()
	t.lb.evict(now, t.window)
	no := t.files.of(b)
	if mints || t.mint {
		t.pins = append(t.pins, pin{ticket: ticket, seq: t.lb.next()})
		t.setPin()
		t.mint = false
	}
	t.hits, _ = t.m.BlockMarked(t.hits[:0], b.Data, &t.set, mk)
	t.index(b, no, now)
	t.lastBlock = linematch.Location{File: no, Offset: uint64(b.Pos.Offset)}
	t.files.release(t.lb.first)
	var uses []*tokenwatchv1.LineageEvent
	if len(t.hits) > 0 {
		fp := bytes.Clone(b.Pos.ID.FP)
		for i, h := range t.hits {
			h.Event.Origin = &audit.Origin{File: b.Pos.Name, Offset: uint64(b.Pos.Offset) + uint64(h.Offset),
				Fingerprint: fp, FingerprintLen: uint32(max(b.Pos.ID.FPLen, 0))}
			if u := t.report(h.Event, h.Kinds, false); u != nil {
				uses = append(uses, u)
			}
			t.hits[i].Event = nil
		}
	}
	return sender.Items{Uses: uses, Counts: t.rep.take()}, ticket, nil
}

// waitRoom waits until the index can take a block of size bytes without
// evicting a pinned one (or nothing is pinned).
func (t *Tracker) waitRoom(ctx context.Context, size int) error {
	for waited := false; ; waited = true {
		t.mu.Lock()
		ok := !t.on || len(t.pins) == 0 || t.lb.room(size)
		room := t.room
		if !ok && !waited {
			t.waits++
		}
		onWait := t.onWait
		t.mu.Unlock()
		if ok {
			return nil
		}
		if onWait != nil {
			onWait()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-room:
		}
	}
}

// index adds b to the index. Called with mu held.
func (t *Tracker) index(b follow.Block, no uint32, now time.Time) {
	f := t.files.byNo[no]
	if f != nil && f.fpLen != b.Pos.ID.FPLen {
		f.fp, f.fpLen = bytes.Clone(b.Pos.ID.FP), b.Pos.ID.FPLen
	}
	t.readTo = linematch.Location{File: no, Offset: uint64(b.Pos.Offset) + uint64(len(b.Data))}
	if len(b.Data) == 0 {
		return
	}
	loc := linematch.Location{File: no, Offset: uint64(b.Pos.Offset), Length: uint32(len(b.Data))}
	seq, ok := t.lb.add(loc, now, lastLogged(b.Data))
	if !ok {
		t.unindexed++
		return
	}
	if f != nil {
		f.last = seq
	}
}

// report decides whether e, matched as kinds, is sent (the use returned) or
// counted (nil); e is neither when it is not its request's use (stages).
// Called with mu held.
func (t *Tracker) report(e *audit.Event, kinds linematch.Kind, lookback bool) *tokenwatchv1.LineageEvent {
	if !t.stages.use(e, t.ticket) || !t.rep.decide(e, kinds) {
		return nil
	}
	t.usesSent++
	return toUse(e, kinds, lookback)
}

// toUse is e's wire form as a use: never a request body.
func toUse(e *audit.Event, kinds linematch.Kind, lookback bool) *tokenwatchv1.LineageEvent {
	e.RequestObject = nil
	p := wire.ToProto(e)
	if proto.Size(p) > sender.MaxEventBytes {
		audit.Bound(e)
		p = wire.ToProto(e)
	}
	u := &tokenwatchv1.LineageEvent{Event: p, Lookback: lookback}
	for _, m := range []struct {
		k linematch.Kind
		w tokenwatchv1.LineageKind
	}{
		{linematch.Token, tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN},
		{linematch.ActorUser, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER},
		{linematch.ActorCredential, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL},
		{linematch.Legacy, tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN},
	} {
		if kinds&m.k != 0 {
			u.Matched = append(u.Matched, m.w)
		}
	}
	return u
}
