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
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Block matches b's lines against the watch set and indexes them for the
// lookback. It returns the uses and counts to queue with b's token creates
// and b's ticket, which the block's mark carries to Acked once it is
// acknowledged. mints says b holds token creates: its lines are then pinned
// in the index until that acknowledgement. Block waits, until ctx ends,
// while pinned entries leave no room for b's lines. It is called from one
// goroutine (the follower's).
func (t *Tracker) Block(ctx context.Context, b follow.Block, mints bool) (sender.Items, uint64, error) {
	t.keys = linematch.AppendKeys(t.keys[:0], b.Data)
	if err := t.waitRoom(ctx, len(t.keys)); err != nil {
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
	t.lb.Evict(now, t.window)
	no := t.files.of(b)
	if mints || t.mint {
		t.pins = append(t.pins, pin{ticket: ticket, seq: t.lb.Next()})
		t.setPin()
		t.mint = false
	}
	t.hits, _ = t.m.Block(t.hits[:0], b.Data, &t.set)
	t.index(b, no, now)
	t.files.release(t.lb.Next() - uint64(t.lb.Len()))
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

// waitRoom waits until the index can take n more entries without evicting
// a pinned one (or nothing is pinned).
func (t *Tracker) waitRoom(ctx context.Context, n int) error {
	for {
		t.mu.Lock()
		ok := !t.on || len(t.pins) == 0 || int(t.lb.Next()-t.pins[0].seq)+n <= t.cfg.Capacity
		room := t.room
		if !ok {
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

// index adds b's lines with keys to the index. Called with mu held.
func (t *Tracker) index(b follow.Block, no uint32, now time.Time) {
	f := t.files.byNo[no]
	if f != nil && f.fpLen != b.Pos.ID.FPLen {
		f.fp, f.fpLen = bytes.Clone(b.Pos.ID.FP), b.Pos.ID.FPLen
	}
	for _, k := range t.keys {
		if !k.Keys.HasJTI && !k.Keys.Unsure && (k.Keys.User == 0 || !maySensitive(b.Data[k.Start:k.End])) {
			continue // no watch can match it: no credential JTI, and no sensitive action of its user
		}
		loc := linematch.Location{File: no, Offset: uint64(b.Pos.Offset) + uint64(k.Start), Length: uint32(k.End - k.Start)}
		seq, ok := t.lb.Add(k.Keys, loc, now)
		if !ok {
			t.unindexed++
			continue
		}
		if f != nil {
			f.last = seq
		}
	}
	t.readTo = linematch.Location{File: no, Offset: uint64(b.Pos.Offset) + uint64(len(b.Data))}
}

// report decides whether e, matched as kinds, is sent (the use returned) or
// counted (nil). Called with mu held.
func (t *Tracker) report(e *audit.Event, kinds linematch.Kind, lookback bool) *tokenwatchv1.LineageEvent {
	if !t.rep.decide(e, kinds) {
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

// sensitiveBytes are byte strings one of which every sensitive action's
// line holds (lineage.Action: the resources it names, impersonatedUser), or
// an escape that could hide them.
var sensitiveBytes = [][]byte{
	[]byte("secrets"), []byte("pods"), []byte("nodes"), []byte("serviceaccounts"), []byte("role"),
	[]byte("certificatesigningrequests"), []byte("impersonatedUser"), []byte(`\u`),
}

// maySensitive reports whether line may be a sensitive action, the only
// requests a followed minter's user name (ActorUser) matches: a line
// without a credential JTI that is not one need not be indexed. It never
// says no to a sensitive action.
func maySensitive(line []byte) bool {
	for _, s := range sensitiveBytes {
		if bytes.Contains(line, s) {
			return true
		}
	}
	return false
}
