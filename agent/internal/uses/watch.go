package uses

import (
	"math"
	"slices"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/linematch"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// job is a lookback search: the blocks read before new watches arrived
// that may hold their matches, to be read again and matched against them.
type job struct {
	locs    []linematch.Location // blocks, in reading order
	set     linematch.Set        // the new watches
	watches []linematch.Watch    // the same, as added
	// old holds what was found before of the watches held before (extended,
	// or held with the same bounds before a reconnect). The job's blocks
	// are matched against all its watches at once, so a block read again
	// for a new watch also holds lines of those held before: old keeps
	// them from being reported twice.
	old     map[watchKey]before
	gap     bool // gapFrom applies: lines from it on are in the gap
	gapFrom linematch.Location
	files   []uint32 // the files of locs, each holding a job reference
}

// before is what was found of a watch before a job: its matches within
// span, live or by an earlier search, except, with gap, those read in the
// gap (the watch was held by the previous stream).
type before struct {
	span
	gap bool
}

// kindOf maps a wire kind to a watchable linematch kind.
func kindOf(k tokenwatchv1.LineageKind) (linematch.Kind, bool) {
	switch k {
	case tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN:
		return linematch.Token, true
	case tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER:
		return linematch.ActorUser, true
	case tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL:
		return linematch.ActorCredential, true
	}
	return 0, false
}

func watchOf(w *tokenwatchv1.Watch) (linematch.Watch, bool) {
	k, ok := kindOf(w.GetKind())
	if !ok || w.GetKey() == "" || len(w.GetKey()) > linematch.MaxKeyLen {
		return linematch.Watch{}, false
	}
	lw := linematch.Watch{Kind: k, Key: w.GetKey()}
	if w.GetFrom() != nil {
		lw.From = w.GetFrom().AsTime()
	}
	if w.GetUntil() != nil {
		lw.Until = w.GetUntil().AsTime()
	}
	return lw, true
}

func spanOf(w linematch.Watch) span {
	from, until := w.Nanos()
	return span{from: from, until: until}
}

func (s span) hull(o span) span { return span{min(s.from, o.from), max(s.until, o.until)} }

func (s span) holds(o span) bool { return s.from <= o.from && o.until <= s.until }

func (s span) contains(t int64) bool { return s.from <= t && t <= s.until }

// Watch applies a WatchUpdate (sender.Lineage) and searches the index for
// the lines read before it that its new watches may match: the search is
// queued for Run, which reads them again. Under the lock that Block holds
// while it matches and indexes a block, so no line escapes both.
func (t *Tracker) Watch(u *tokenwatchv1.WatchUpdate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.on {
		return
	}
	ref, gap := t.held, false
	if t.completing {
		// A later part of the stream's set (or a change queued after it):
		// compared with the previous stream's watches, as its first part
		// (a watch this stream holds already, with what it holds).
		ref, gap = t.prior, true
	}
	if u.GetReset_() {
		if t.awaiting {
			// The stream's first reset: watches the previous stream held
			// were matched until the Welcome; the gap since is searched.
			ref, gap = t.prior, true
		}
		t.set.Reset()
		t.held = map[watchKey]span{}
	}
	for _, w := range u.GetRemove() {
		k, ok := kindOf(w.GetKind())
		if !ok {
			continue
		}
		t.set.Remove(k, w.GetKey())
		delete(t.held, watchKey{k, w.GetKey()})
		if k == linematch.Token {
			t.rep.forget(w.GetKey())
		}
	}
	j := &job{gap: gap, gapFrom: t.gapFrom}
	full, inGap := t.addWatches(u.GetAdd(), ref, gap, j)
	switch {
	case u.GetReset_() && t.awaiting:
		// The set may go on in later updates: see WatchSetComplete.
		t.awaiting, t.completing = false, t.prior != nil
		t.signalRoom() // Drain waits for it
		if !t.completing {
			t.forgetUnwatched()
		}
	case u.GetReset_():
		t.completing, t.prior = false, nil
		t.forgetUnwatched()
	}
	t.search(j, full, inGap)
}

// WatchSetComplete tells that the stream's whole watch set has arrived
// (sender.WatchSetCompleter): the aggregator queues every part of it
// before the stream's first Ack. The previous stream's watches stop being
// the reference, and the reason keys of tokens no longer watched are
// forgotten.
func (t *Tracker) WatchSetComplete() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.completing {
		return
	}
	t.completing, t.prior = false, nil
	t.forgetUnwatched()
}

// addWatches adds ws to the set and sorts them for the search: full ones
// are new or extended relative to ref (or to what the stream holds, for a
// watch it holds already), searched in the whole index; inGap ones were
// held before (ref, with gap) and are searched in the gap only; those held
// before with the same bounds and no gap are not searched.
func (t *Tracker) addWatches(ws []*tokenwatchv1.Watch, ref map[watchKey]span, gap bool, j *job) (full, inGap []linematch.Watch) {
	for _, pw := range ws {
		w, ok := watchOf(pw)
		if !ok || t.set.Add(w) != nil {
			continue
		}
		k := watchKey{w.Kind, w.Key}
		old, had := ref[k] // before held changes: ref may be held
		newGap := gap
		s := spanOf(w)
		if cur, ok := t.held[k]; ok {
			// Held by this stream already (pushed again: a change
			// published to a stream that joined with it in its set): it
			// was searched then, the gap included, and matched live since.
			old, had, newGap = cur, true, false
			s = s.hull(cur)
		}
		t.held[k] = s
		switch {
		case !had:
			full = append(full, w)
		case !old.holds(s):
			full = append(full, w)
			j.found(k, before{old, newGap})
		case newGap:
			inGap = append(inGap, w)
			j.found(k, before{old, true})
		default:
			continue // held with these bounds, and matched live since
		}
		_ = j.set.Add(w)
		j.watches = append(j.watches, w)
	}
	return full, inGap
}

// found notes what was found of the watch k before the job (job.old).
func (j *job) found(k watchKey, b before) {
	if j.old == nil {
		j.old = map[watchKey]before{}
	}
	j.old[k] = b
}

// forgetUnwatched drops the reason keys of tokens no longer watched.
func (t *Tracker) forgetUnwatched() {
	for jti := range t.rep.seen {
		if _, ok := t.held[watchKey{linematch.Token, jti}]; !ok {
			t.rep.forget(jti)
		}
	}
}

// search finds the blocks of the index that full (all) and inGap (from
// gapFrom on) may match, and queues j to read them again. Only blocks read
// since shortly before the watches' From can hold their matches
// (readSlack). Called with mu held.
func (t *Tracker) search(j *job, full, inGap []linematch.Watch) {
	if len(full) == 0 && len(inGap) == 0 {
		return
	}
	var locs []linematch.Location
	if len(full) > 0 {
		locs = t.lb.find(locs, readFrom(full), nil)
	}
	if len(inGap) > 0 {
		locs = t.lb.find(locs, readFrom(inGap), j.inGap)
	}
	if len(locs) == 0 {
		return
	}
	sortLocations(locs)
	j.locs = slices.Compact(locs)
	refs := map[uint32]bool{}
	for _, l := range j.locs {
		if f := t.files.byNo[l.File]; f != nil && !refs[l.File] {
			refs[l.File] = true
			f.jobs++
			j.files = append(j.files, l.File)
		}
	}
	t.jobs = append(t.jobs, j)
	select {
	case t.work <- struct{}{}:
	default:
	}
}

// readFrom returns the earliest read time, in Unix nanoseconds, of a block
// that may hold a match of ws: readSlack before their earliest From (no
// bound when one has none).
func readFrom(ws []linematch.Watch) int64 {
	from := int64(math.MaxInt64)
	for _, w := range ws {
		if w.From.IsZero() {
			return math.MinInt64
		}
		from = min(from, w.From.Add(-readSlack).UnixNano())
	}
	return from
}

// inGap reports whether l was read after the Welcome of a stream's first
// reset (files are numbered in reading order).
func (j *job) inGap(l linematch.Location) bool {
	if !j.gap {
		return false
	}
	return l.File > j.gapFrom.File || (l.File == j.gapFrom.File && l.Offset >= j.gapFrom.Offset)
}

// excluded reports whether a match of kind k and key, timed at ts, read at
// l, was found before the job: within the watch's bounds before, and not
// read in a gap that was new to it.
func (j *job) excluded(k linematch.Kind, key string, ts time.Time, ok bool, l linematch.Location) bool {
	b, had := j.old[watchKey{k, key}]
	if !had || b.gap && j.inGap(l) {
		return false
	}
	return !ok || b.contains(ts.UnixNano()) // an unknown time matched the old bounds too
}
