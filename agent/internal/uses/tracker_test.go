package uses

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

const legacySA = "system:serviceaccount:team-b:old"

// TestFirstUsePerKeyThenCounts: the first use of a watched token per reason
// key (source IP; sensitive action and namespace) is sent, the rest
// counted; legacy-token requests are only counted; an unwatched token's
// requests are nothing.
func TestFirstUsePerKeyThenCounts(t *testing.T) {
	tr, _, _ := newTracker(t, 1<<20)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	log := newLog(t)
	b := log.block(lines(
		req{id: "u1", jti: jtiA, ip: "10.0.0.1", ns: "team-a"},
		req{id: "u2", jti: jtiA, ip: "10.0.0.1", ns: "team-a"},
		req{id: "u3", jti: jtiA, ip: "10.0.0.2", ns: "team-a"},
		req{id: "u4", jti: jtiA, ip: "10.0.0.1", verb: "list", resource: "secrets", ns: "kube-system"},
		req{id: "u5", jti: jtiA, ip: "10.0.0.1", verb: "list", resource: "secrets", ns: "kube-system", code: 403},
		req{id: "l1", user: legacySA, legacy: legacySA, ip: "10.0.0.7", ns: "team-b"},
		req{id: "l2", user: legacySA, legacy: legacySA, ip: "10.0.0.8", ns: "team-b", code: 401},
		req{id: "x1", jti: jtiB, ip: "10.0.0.1", ns: "team-a"},
	))
	it, _, err := tr.Block(context.Background(), b, false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"u1", "u3", "u4"}, useIDs(it)); diff != "" {
		t.Errorf("uses sent (-want +got):\n%s", diff)
	}
	for _, u := range it.Uses {
		if u.Lookback || !cmp.Equal(u.Matched, []tokenwatchv1.LineageKind{tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}) {
			t.Errorf("use %s: lookback %v, matched %v; want live, TOKEN", u.Event.AuditId, u.Lookback, u.Matched)
		}
		if u.Event.Source.GetFile() != log.path {
			t.Errorf("use %s: source %v, want the file", u.Event.AuditId, u.Event.Source)
		}
	}
	want := []*tokenwatchv1.UseCount{
		{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: jtiA, Uses: 2,
			Verbs:     []*tokenwatchv1.KeyCount{{Key: "get configmaps team-a", Count: 1}, {Key: "list secrets kube-system", Count: 1}},
			SourceIps: []string{"10.0.0.1"},
			Codes:     []*tokenwatchv1.KeyCount{{Key: "200", Count: 1}, {Key: "403", Count: 1}},
			User:      "system:serviceaccount:team-a:app"},
		{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN, Key: legacySA, Uses: 2,
			Verbs:     []*tokenwatchv1.KeyCount{{Key: "get configmaps team-b", Count: 2}},
			SourceIps: []string{"10.0.0.7", "10.0.0.8"},
			Codes:     []*tokenwatchv1.KeyCount{{Key: "200", Count: 1}, {Key: "401", Count: 1}},
			User:      legacySA},
	}
	if diff := cmp.Diff(want, it.Counts, protocmp.Transform(), protocmp.IgnoreFields(&tokenwatchv1.UseCount{}, "first", "last")); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	for _, c := range it.Counts {
		if c.First == nil || c.Last == nil {
			t.Errorf("count %s: no first or last time", c.Key)
		}
	}
	st := tr.Stats()
	if st.UsesSent != 3 || st.UsesCounted != 4 || st.TokenWatches != 1 {
		t.Errorf("Stats = %+v, want 3 sent, 4 counted, 1 token watch", st)
	}
}

// TestMaxKeysPerToken: past the bound of reason keys, a token's uses with
// a new source IP are counted.
func TestMaxKeysPerToken(t *testing.T) {
	q := newQueue()
	tr := New(Config{MaxKeysPerToken: 2, Queue: q})
	t.Cleanup(tr.Close)
	tr.Welcome(settings())
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	b := newLog(t).block(lines(
		req{id: "a", jti: jtiA, ip: "10.0.0.1"}, req{id: "b", jti: jtiA, ip: "10.0.0.2"}, req{id: "c", jti: jtiA, ip: "10.0.0.3"},
	))
	it, _, err := tr.Block(context.Background(), b, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := useIDs(it); !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("uses = %v, want a b (the third key is past the bound)", got)
	}
	if len(it.Counts) != 1 || it.Counts[0].Uses != 1 {
		t.Errorf("counts = %v, want c counted", it.Counts)
	}
}

// TestLookbackAfterRename: a use read before its watch arrived is read
// again from the file, renamed and deleted meanwhile, and sent with
// Lookback; a further use of the same key is counted and flushed on its
// own.
func TestLookbackAfterRename(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	tr.cfg.FlushInterval = time.Millisecond
	run(t, tr)
	log := newLog(t)
	b := log.block(lines(
		req{id: "early", jti: jtiA, ip: "10.0.0.1"},
		req{id: "other", jti: jtiB, ip: "10.0.0.1"},
		req{id: "again", jti: jtiA, ip: "10.0.0.1"},
	))
	it, _, err := tr.Block(context.Background(), b, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(it.Uses)+len(it.Counts) != 0 {
		t.Fatalf("Block = %v before any watch, want nothing", it)
	}
	rotated := log.path + ".1"
	if err := os.Rename(log.path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(rotated); err != nil {
		t.Fatal(err)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	items := q.wait(t, "the lookback use and its count", func(items []sender.Items) bool {
		var uses, counts int
		for _, it := range items {
			uses += len(it.Uses)
			counts += len(it.Counts)
		}
		return uses == 1 && counts == 1
	})
	var got []string
	for _, it := range items {
		got = append(got, useIDs(it)...)
		for _, u := range it.Uses {
			if !u.Lookback {
				t.Errorf("use %s without Lookback", u.Event.AuditId)
			}
		}
		for _, c := range it.Counts {
			if c.Key != jtiA || c.Uses != 1 {
				t.Errorf("count = %v, want 1 use of %s", c, jtiA)
			}
		}
		if len(it.Losses) > 0 {
			t.Errorf("losses %v", it.Losses)
		}
	}
	if !cmp.Equal(got, []string{"early"}) {
		t.Errorf("lookback uses = %v, want early", got)
	}
	if st := tr.Stats(); st.LookbackHits != 2 || st.LookbackMisses != 0 {
		t.Errorf("Stats = %+v, want 2 lookback hits, no miss", st)
	}
}

// TestLookbackCompressed: lines read from a compressed file are read again
// by decompressing it.
func TestLookbackCompressed(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	data := lines(req{id: "n1", jti: jtiB, ip: "10.0.0.1"}, req{id: "gz", jti: jtiA, ip: "10.0.0.1"})
	path := filepath.Join(t.TempDir(), "audit-2026-11-26T23-00-00.000.log.gz")
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write([]byte(data))
	zw.Close()
	if err := os.WriteFile(path, zb.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := follow.Block{Pos: follow.Position{ID: follow.Identity{FP: []byte("gzfp"), FPLen: 4}, Name: path}, Data: []byte(data), File: f, Compressed: true}
	if _, _, err := tr.Block(context.Background(), b, false); err != nil {
		t.Fatal(err)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	items := q.wait(t, "the lookback use", func(items []sender.Items) bool { return len(items) > 0 })
	if got := useIDs(items[0]); !cmp.Equal(got, []string{"gz"}) || len(items[0].Losses) > 0 {
		t.Errorf("queued %v, want the use gz and no loss", items[0])
	}
}

// TestLookbackUnavailable: a line whose file could not be kept open is
// reported lost.
func TestLookbackUnavailable(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	b := newLog(t).block(lines(req{id: "u", jti: jtiA, ip: "10.0.0.1"}))
	b.File = nil
	if _, _, err := tr.Block(context.Background(), b, false); err != nil {
		t.Fatal(err)
	}
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	items := q.wait(t, "the loss", func(items []sender.Items) bool { return len(items) > 0 })
	if l := items[0].Losses; len(l) != 1 || l[0].Reason != ReasonLookbackUnavailable || l[0].LinesLost != 1 {
		t.Errorf("losses = %v, want one line lost for %s", l, ReasonLookbackUnavailable)
	}
	if st := tr.Stats(); st.LookbackMisses != 1 {
		t.Errorf("LookbackMisses = %d, want 1", st.LookbackMisses)
	}
}

// TestPinBlocksEviction: blocks read after a token create stay in the index
// past the window until the create's batch is acknowledged; when they fill
// the index, Block waits for that acknowledgement instead of dropping them,
// and the watch that arrives before it finds them.
func TestPinBlocksEviction(t *testing.T) {
	mintLines := lines(req{id: "mint", jti: jtiB, ip: "10.0.0.9"}, req{id: "use", jti: jtiA, ip: "10.0.0.1"})
	tr, q, clk := newTracker(t, len(mintLines)+10) // room for the mint's block only
	run(t, tr)
	waiting := make(chan struct{}, 1)
	tr.onWait = func() { waiting <- struct{}{} }
	log := newLog(t)
	mint := log.block(mintLines)
	_, ticket, err := tr.Block(context.Background(), mint, true)
	if err != nil {
		t.Fatal(err)
	}
	clk.add(10 * time.Minute) // far past the window: only the pin keeps them
	next := log.block(lines(req{id: "n1", jti: jtiB, ip: "10.0.0.9"}, req{id: "n2", jti: jtiB, ip: "10.0.0.9"}))
	done := make(chan error, 1)
	go func() {
		_, _, err := tr.Block(context.Background(), next, false)
		done <- err
	}()
	<-waiting // the pinned block + the new one > capacity: Block waits
	if st := tr.Stats(); st.LookbackEntries != 1 || st.LookbackPinned != 1 {
		t.Errorf("Stats = %+v while waiting, want the pinned block held", st)
	}
	// The aggregator's watch for the mint arrives before its Ack.
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.Acked(ticket)
	if err := <-done; err != nil {
		t.Fatalf("Block = %v", err)
	}
	items := q.wait(t, "the pinned use", func(items []sender.Items) bool { return len(items) > 0 })
	if got := useIDs(items[0]); !cmp.Equal(got, []string{"use"}) {
		t.Errorf("lookback uses = %v, want use", got)
	}
	if st := tr.Stats(); st.LookbackPinned != 0 || st.PinWaits != 1 {
		t.Errorf("Stats = %+v after the ack, want nothing pinned and one wait", st)
	}
}

// TestUnpinnedEntriesExpire: without a pin, lines read longer than the
// lookback ago are not found.
func TestUnpinnedEntriesExpire(t *testing.T) {
	tr, _, clk := newTracker(t, 1<<20)
	log := newLog(t)
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "old", jti: jtiA, ip: "10.0.0.1"})), false); err != nil {
		t.Fatal(err)
	}
	clk.add(3 * time.Minute)
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "new", jti: jtiB, ip: "10.0.0.1"})), false); err != nil {
		t.Fatal(err)
	}
	if st := tr.Stats(); st.LookbackEntries != 1 {
		t.Errorf("LookbackEntries = %d, want 1 (the old block evicted)", st.LookbackEntries)
	}
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, j := range tr.jobs {
		for _, l := range j.locs {
			if l.Offset == 0 {
				t.Errorf("a lookback search reads the block past the window (%+v)", l)
			}
		}
	}
}

// TestReconnectSearchesTheGap: after a reconnect the stream starts with no
// watch until its reset; the reset finds the lines read in between for the
// watches held before, and does not report again those matched before.
func TestReconnectSearchesTheGap(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	log := newLog(t)
	it, _, err := tr.Block(context.Background(), log.block(lines(req{id: "live", jti: jtiA, ip: "10.0.0.1"})), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := useIDs(it); !cmp.Equal(got, []string{"live"}) {
		t.Fatalf("live uses = %v, want live", got)
	}
	tr.Welcome(settings()) // reconnected
	it, _, err = tr.Block(context.Background(), log.block(lines(req{id: "gap", jti: jtiA, ip: "10.0.0.2"})), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(it.Uses) != 0 {
		t.Errorf("uses %v before the new stream's reset, want none", useIDs(it))
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	items := q.wait(t, "the gap's use", func(items []sender.Items) bool { return len(items) > 0 })
	if got := useIDs(items[0]); !cmp.Equal(got, []string{"gap"}) {
		t.Errorf("lookback uses after the reset = %v, want gap only", got)
	}
}

// TestReconnectNewWatchBesideHeldOnes: after a reconnect the reset holds
// watches held before and a new one (a token minted while the agent was
// away). The new watch is searched in the whole index, and the blocks read
// before the Welcome are read again for it; the lines there of the watches
// held before were matched live and are not reported again: only the gap's
// are. Before, the whole reset was matched on those blocks and a use
// already counted was counted again (reconnect_recount).
func TestReconnectNewWatchBesideHeldOnes(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.WatchSetComplete()
	log := newLog(t)
	it, _, err := tr.Block(context.Background(), log.block(lines(
		req{id: "liveA", jti: jtiA, ip: "10.0.0.1"}, req{id: "againA", jti: jtiA, ip: "10.0.0.1"},
		req{id: "earlyB", jti: jtiB, ip: "10.0.0.1"},
	)), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := useIDs(it); !cmp.Equal(got, []string{"liveA"}) || len(it.Counts) != 1 || it.Counts[0].Uses != 1 {
		t.Fatalf("live: uses %v, counts %v; want liveA and againA counted", got, it.Counts)
	}
	tr.Welcome(settings()) // reconnected
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "gapA", jti: jtiA, ip: "10.0.0.1"})), false); err != nil {
		t.Fatal(err)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA), tokenWatch(jtiB)}})
	left, err := tr.Drain(context.Background()) // the search is done
	if err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	items := append(append([]sender.Items(nil), q.items...), left)
	q.mu.Unlock()
	ids, _ := queuedUses(items)
	counted := map[string]uint64{}
	for _, it := range items {
		for _, c := range it.Counts {
			counted[c.Key] += c.Uses
		}
	}
	if !cmp.Equal(ids, []string{"earlyB"}) || counted[jtiA] != 1 || counted[jtiB] != 0 {
		t.Errorf("after the reset: lookback uses %v, counted %v; want earlyB, and %s's gap line counted once", ids, counted, jtiA)
	}
}

// TestWatchPushedAgainBeforeFirstAck: a watch of the stream's reset can
// come again before the stream's first Ack (a change published to a stream
// that joined with it in its set already). What the stream holds of it was
// searched by the reset or matched live since: nothing is reported again.
func TestWatchPushedAgainBeforeFirstAck(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.WatchSetComplete()
	log := newLog(t)
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "liveA", jti: jtiA, ip: "10.0.0.1"})), false); err != nil {
		t.Fatal(err)
	}
	tr.Welcome(settings()) // reconnected
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "gapA", jti: jtiA, ip: "10.0.0.1"})), false); err != nil {
		t.Fatal(err)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	it, _, err := tr.Block(context.Background(), log.block(lines(req{id: "afterA", jti: jtiA, ip: "10.0.0.1"})), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(it.Counts) != 1 || it.Counts[0].Uses != 1 {
		t.Fatalf("after the reset: counts %v, want afterA counted live", it.Counts)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}}) // again, no Ack yet
	left, err := tr.Drain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	ids, counted := queuedUses(append(append([]sender.Items(nil), q.items...), left))
	q.mu.Unlock()
	if len(ids) != 0 || counted != 1 {
		t.Errorf("lookback: uses %v and %d counted; want gapA counted once", ids, counted)
	}
}

// TestStreamEndedBeforeItsReset: a stream welcomed whose reset never came
// (it ended at once: an aggregator stopping, say) leaves no watch; the
// lines read since its Welcome are in the gap of the next stream's reset.
func TestStreamEndedBeforeItsReset(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.WatchSetComplete()
	log := newLog(t)
	tr.Welcome(settings()) // reconnected; the stream ends before its reset
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "gap1", jti: jtiA, ip: "10.0.0.1"})), false); err != nil {
		t.Fatal(err)
	}
	tr.Welcome(settings()) // reconnected again
	if _, _, err := tr.Block(context.Background(), log.block(lines(req{id: "gap2", jti: jtiA, ip: "10.0.0.2"})), false); err != nil {
		t.Fatal(err)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	left, err := tr.Drain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	ids, _ := queuedUses(append(append([]sender.Items(nil), q.items...), left))
	q.mu.Unlock()
	if !cmp.Equal(ids, []string{"gap1", "gap2"}) {
		t.Errorf("lookback uses after the reset = %v, want gap1 gap2", ids)
	}
}

// TestLineageOff: a Welcome without settings drops the watches and the
// index; nothing is matched, not even legacy tokens.
func TestLineageOff(t *testing.T) {
	tr, _, _ := newTracker(t, 1<<20)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.Welcome(nil)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiB)}})
	it, _, err := tr.Block(context.Background(), newLog(t).block(lines(
		req{id: "u", jti: jtiA, ip: "10.0.0.1"}, req{id: "l", user: legacySA, legacy: legacySA, ip: "10.0.0.1"},
	)), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(it.Uses)+len(it.Counts) != 0 {
		t.Errorf("Block = %v with lineage off, want nothing", it)
	}
	if st := tr.Stats(); st.On || st.TokenWatches != 0 || st.LookbackEntries != 0 || st.LookbackPinned != 0 {
		t.Errorf("Stats = %+v, want off, no watch, no entry, nothing pinned", st)
	}
}

// TestActorLookback: a followed minter's sensitive actions read before the
// watch are found by the lookback, its other requests are not.
func TestActorLookback(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	const minter = "alice"
	b := newLog(t).block(lines(
		req{id: "plain", user: minter, ip: "10.0.0.1", verb: "get", resource: "configmaps", ns: "team-a"},
		req{id: "exec", user: minter, ip: "10.0.0.1", verb: "create", resource: "pods", sub: "exec", ns: "team-a"},
		req{id: "read", user: minter, ip: "10.0.0.1", verb: "list", resource: "secrets", ns: "team-a"},
	))
	if _, _, err := tr.Block(context.Background(), b, false); err != nil {
		t.Fatal(err)
	}
	if st := tr.Stats(); st.LookbackEntries != 1 {
		t.Errorf("LookbackEntries = %d, want 1 (one block)", st.LookbackEntries)
	}
	queueAll(tr)
	w := tokenWatch(minter)
	w.Kind = tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{w}})
	items := q.wait(t, "the actor's actions", func(items []sender.Items) bool { return len(items) > 0 })
	if got := useIDs(items[0]); !cmp.Equal(got, []string{"exec", "read"}) {
		t.Errorf("lookback uses = %v, want exec read", got)
	}
}

// TestSplitResetSet: after a reconnect the watch set comes in two parts
// (the first resets) before the stream's first Ack. Watches held before
// that arrive in the second part are not searched again in the whole
// index, and their uses already reported are not reported again.
func TestSplitResetSet(t *testing.T) {
	tr, _, _ := newTracker(t, 1<<20)
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA), tokenWatch(jtiB)}})
	log := newLog(t)
	it, _, err := tr.Block(context.Background(), log.block(lines(
		req{id: "liveA", jti: jtiA, ip: "10.0.0.1"}, req{id: "liveB", jti: jtiB, ip: "10.0.0.1"},
	)), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := useIDs(it); !cmp.Equal(got, []string{"liveA", "liveB"}) {
		t.Fatalf("live uses = %v, want liveA liveB", got)
	}
	queueAll(tr)
	tr.Welcome(settings()) // reconnected
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true, Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiB)}})
	tr.WatchSetComplete() // the stream's first Ack
	tr.mu.Lock()
	jobs := len(tr.jobs)
	tr.mu.Unlock()
	if jobs != 0 {
		t.Errorf("%d lookback searches after the split set, want none (nothing read in the gap)", jobs)
	}
	it, _, err = tr.Block(context.Background(), log.block(lines(
		req{id: "againA", jti: jtiA, ip: "10.0.0.1"}, req{id: "againB", jti: jtiB, ip: "10.0.0.1"},
	)), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := useIDs(it); len(got) != 0 {
		t.Errorf("uses after the split set = %v, want none (reported before the reconnect)", got)
	}
}
