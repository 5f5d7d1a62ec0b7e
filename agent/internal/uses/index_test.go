package uses

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// TestBlockIndexBounds: the index evicts its oldest blocks to stay within
// its bytes and entries, never a pinned one, and counts the pinned ones.
func TestBlockIndexBounds(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)
	x := newBlockIndex(100, 3)
	loc := func(off, n uint64) linematch.Location {
		return linematch.Location{File: 1, Offset: off, Length: uint32(n)}
	}
	for i, n := range []uint64{40, 40} {
		if _, ok := x.add(loc(uint64(i)*40, n), t0, time.Time{}); !ok {
			t.Fatalf("add %d refused", i)
		}
	}
	x.pin = x.next() // pins what comes next
	if _, ok := x.add(loc(80, 40), t0, time.Time{}); !ok {
		t.Fatal("add refused with unpinned blocks to evict")
	}
	if x.n != 2 || x.bytes != 80 || x.dropped != 1 || x.pinnedEntries() != 1 || x.pinnedBytes() != 40 {
		t.Errorf("after the bytes bound: n=%d bytes=%d dropped=%d pinned %d (%d bytes), want 2 80 1 1 (40)",
			x.n, x.bytes, x.dropped, x.pinnedEntries(), x.pinnedBytes())
	}
	if !x.room(60) || x.room(61) {
		t.Errorf("room(60), room(61) = %v, %v, want true, false", x.room(60), x.room(61))
	}
	if _, ok := x.add(loc(120, 60), t0, time.Time{}); !ok {
		t.Fatal("add refused with an unpinned block to evict")
	}
	if _, ok := x.add(loc(180, 10), t0, time.Time{}); ok {
		t.Error("add evicted a pinned block")
	}
	if n := x.evict(t0.Add(time.Hour), time.Minute); n != 0 {
		t.Errorf("evict dropped %d pinned blocks", n)
	}
	x.pin = noPin
	if n := x.evict(t0.Add(time.Hour), time.Minute); n != 2 || x.n != 0 {
		t.Errorf("evict = %d leaving %d, want 2 leaving 0", n, x.n)
	}
}

// TestLookbackReadsSinceFrom: a search reads again only the blocks read
// since shortly before the watch's From: an earlier block holds no request
// received at or after From.
func TestLookbackReadsSinceFrom(t *testing.T) {
	tr, _, clk := newTracker(t, 1<<20)
	log := newLog(t)
	first := log.block(lines(req{id: "before", jti: jtiA, ip: "10.0.0.1", at: clk.now()}))
	if _, _, err := tr.Block(context.Background(), first, false); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Minute)
	second := log.block(lines(req{id: "after", jti: jtiA, ip: "10.0.0.1", at: clk.now()}))
	if _, _, err := tr.Block(context.Background(), second, false); err != nil {
		t.Fatal(err)
	}
	w := tokenWatch(jtiA)
	w.From = timestamppb.New(clk.now().Add(-time.Second / 2))
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{w}})
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var got []uint64
	for _, j := range tr.jobs {
		for _, l := range j.locs {
			got = append(got, l.Offset)
		}
	}
	if want := []uint64{uint64(second.Pos.Offset)}; !cmp.Equal(got, want) {
		t.Errorf("blocks searched at %v, want %v (the block read after From only)", got, want)
	}
}

// TestLookbackBoundedByLogTime: an agent reading a backlog reads every
// block long after the apiserver logged it; a search then reads again only
// the blocks whose last line was logged no more than logSlack before the
// watch's From, and those whose last line has no time.
func TestLookbackBoundedByLogTime(t *testing.T) {
	tr, _, clk := newTracker(t, 1<<20)
	log := newLog(t)
	mint := clk.now().Add(-time.Hour) // the log is an hour behind
	blocks := []struct {
		name string
		data string
		want bool
	}{
		{"an hour before", lines(req{id: "a", jti: jtiA, at: mint.Add(-time.Hour)}), false},
		{"just before the slack", lines(req{id: "b", jti: jtiA, at: mint.Add(-logSlack - readSlack - time.Second)}), false},
		{"within the slack", lines(req{id: "c", jti: jtiA, at: mint.Add(-logSlack)}), true},
		{"after the mint", lines(req{id: "d", jti: jtiA, at: mint.Add(time.Second)}), true},
		{"last line without a time", lines(req{id: "e", jti: jtiA, at: mint.Add(-time.Hour)}) + "{\"kind\":\"Event\"}\n", true},
		{"older again", lines(req{id: "f", jti: jtiA, at: mint.Add(-time.Minute)}), false},
	}
	want := map[uint64]string{}
	for _, b := range blocks {
		blk := log.block(b.data)
		if b.want {
			want[uint64(blk.Pos.Offset)] = b.name
		}
		if _, _, err := tr.Block(context.Background(), blk, false); err != nil {
			t.Fatal(err)
		}
	}
	w := tokenWatch(jtiA)
	w.From = timestamppb.New(mint)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{w}})
	tr.mu.Lock()
	defer tr.mu.Unlock()
	got := map[uint64]string{}
	for _, j := range tr.jobs {
		for _, l := range j.locs {
			got[l.Offset] = "searched"
		}
	}
	for off, name := range want {
		if got[off] == "" {
			t.Errorf("block %q not searched", name)
		}
	}
	for off := range got {
		if want[off] == "" {
			t.Errorf("block at %d searched, want not (logged before From)", off)
		}
	}
}

// TestLastLogged: the stageTimestamp of a block's last line, the top-level
// one, whatever the line holds before it.
func TestLastLogged(t *testing.T) {
	at := time.Date(2026, 11, 26, 23, 9, 25, 383216000, time.UTC)
	line := req{id: "x", at: at}.line()
	for _, tc := range []struct {
		name, block string
		want        time.Time
	}{
		{"one line", line, at.Add(3 * time.Millisecond)},
		{"no final newline", strings.TrimSuffix(line, "\n"), at.Add(3 * time.Millisecond)},
		{"the last of two", req{id: "y", at: at.Add(-time.Hour)}.line() + line, at.Add(3 * time.Millisecond)},
		{"a nested key first", `{"requestObject":{"stageTimestamp":"2000-01-01T00:00:00Z"},"stageTimestamp":"2026-11-26T23:09:25Z"}`,
			time.Date(2026, 11, 26, 23, 9, 25, 0, time.UTC)},
		{"no key", `{"kind":"Event"}` + "\n", time.Time{}},
		{"not a time", `{"stageTimestamp":"yesterday"}`, time.Time{}},
		{"unterminated", `{"stageTimestamp":"2026-11-26T23:09:25Z`, time.Time{}},
		{"empty", "", time.Time{}},
	} {
		if got := lastLogged([]byte(tc.block)); !got.Equal(tc.want) {
			t.Errorf("%s: lastLogged = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestLookbackSearchesRunTogether: searches queued together read each
// block once, and each finds its own watch's uses.
func TestLookbackSearchesRunTogether(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	b := newLog(t).block(lines(req{id: "a", jti: jtiA, ip: "10.0.0.1"}, req{id: "b", jti: jtiB, ip: "10.0.0.2"}))
	if _, _, err := tr.Block(context.Background(), b, false); err != nil {
		t.Fatal(err)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiB)}})
	run(t, tr)
	items := q.wait(t, "both uses", func(items []sender.Items) bool {
		n := 0
		for _, it := range items {
			n += len(it.Uses)
		}
		return n == 2
	})
	var got []string
	for _, it := range items {
		got = append(got, useIDs(it)...)
	}
	if !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("lookback uses = %v, want a b", got)
	}
	if st := tr.Stats(); st.LookbackRescanned != uint64(len(b.Data)) || st.LookbackHits != 2 {
		t.Errorf("Stats = %+v, want the block read once (%d bytes) and 2 hits", st, len(b.Data))
	}
}
