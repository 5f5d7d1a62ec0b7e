package linematch

import (
	"time"
)

// Location is where the caller read a line: a file of its own numbering,
// the line's offset and length.
type Location struct {
	File   uint32
	Length uint32
	Offset uint64
}

// EntryBytes is the size of one Lookback entry: its keys, location and
// read time.
const EntryBytes = 64

// NoPin pins nothing (Lookback.Pin).
const NoPin = ^uint64(0)

// entry is one line of a Lookback; 64 bytes.
type entry struct {
	keys Keys
	loc  Location
	read int64 // Unix nanoseconds
}

// Lookback is a bounded ring of the keys of recently read lines, so that a
// watch arriving later finds the lines read before it that may match it.
// Memory: at most max entries of EntryBytes each, allocated as the ring
// grows. It is pure (times are parameters) and not safe for concurrent use.
type Lookback struct {
	ring    []entry
	head    int    // index of the oldest entry
	n       int    // entries held
	max     int    // capacity bound
	first   uint64 // sequence number of the oldest entry
	pin     uint64 // entries numbered pin or later are never evicted
	dropped uint64
}

// NewLookback returns an empty Lookback of at most capacity entries (at
// least 1).
func NewLookback(capacity int) *Lookback {
	return &Lookback{max: max(1, capacity), pin: NoPin}
}

// Len returns the number of entries held.
func (l *Lookback) Len() int { return l.n }

// Next returns the sequence number the next Add will give.
func (l *Lookback) Next() uint64 { return l.first + uint64(l.n) }

// Dropped returns how many entries Add evicted early, before Evict would
// have, because the ring was full.
func (l *Lookback) Dropped() uint64 { return l.dropped }

// Pin keeps every entry numbered seq or later (Add's sequence numbers)
// until a later Pin releases it; NoPin releases all.
func (l *Lookback) Pin(seq uint64) { l.pin = seq }

// Add appends the keys of a line read at read and returns its sequence
// number. When the ring is full it evicts the oldest entry first, unless
// that entry is pinned: then it adds nothing and returns false.
func (l *Lookback) Add(k Keys, loc Location, read time.Time) (uint64, bool) {
	if l.n == l.max {
		if l.first >= l.pin {
			return 0, false
		}
		l.pop()
		l.dropped++
	}
	if l.n == len(l.ring) {
		l.grow()
	}
	seq := l.Next()
	l.ring[(l.head+l.n)%len(l.ring)] = entry{keys: k, loc: loc, read: read.UnixNano()}
	l.n++
	return seq, true
}

func (l *Lookback) pop() {
	l.ring[l.head] = entry{}
	l.head = (l.head + 1) % len(l.ring)
	l.n--
	l.first++
}

// grow doubles the ring, up to max entries.
func (l *Lookback) grow() {
	size := min(max(2*len(l.ring), 1024), l.max)
	ring := make([]entry, size)
	for i := 0; i < l.n; i++ {
		ring[i] = l.ring[(l.head+i)%len(l.ring)]
	}
	l.ring, l.head = ring, 0
}

// Evict drops the oldest entries read before now-window, except pinned
// ones, and returns how many it dropped.
func (l *Lookback) Evict(now time.Time, window time.Duration) int {
	limit := now.Add(-window).UnixNano()
	n := 0
	for l.n > 0 && l.first < l.pin && l.ring[l.head].read < limit {
		l.pop()
		n++
	}
	if l.n == 0 && len(l.ring) > 1024 {
		l.ring, l.head = nil, 0 // give the memory back when idle
	}
	return n
}

// Find returns the location of every entry that may match one of watches,
// oldest first: never misses a line that Classify would match under them,
// and may report more (the caller reads the line again and classifies it).
// Legacy is never a watch and is ignored.
func (l *Lookback) Find(watches []Watch) []Location {
	q := newQuery(watches)
	if q.empty() {
		return nil
	}
	var out []Location
	for i := 0; i < l.n; i++ {
		e := &l.ring[(l.head+i)%len(l.ring)]
		if q.may(&e.keys) {
			out = append(out, e.loc)
		}
	}
	return out
}

// query is a set of watches by the keys a Lookback holds.
type query struct {
	ids    map[[16]byte]struct{}
	users  map[uint64]struct{}
	oddJTI bool // a JTI watch that is not a uuid: only unsure lines can match
}

func newQuery(watches []Watch) query {
	q := query{ids: map[[16]byte]struct{}{}, users: map[uint64]struct{}{}}
	for _, w := range watches {
		switch w.Kind {
		case Token, ActorCredential:
			if id, ok := parseUUID(w.Key); ok {
				q.ids[id] = struct{}{}
			} else if w.Key != "" {
				q.oddJTI = true
			}
		case ActorUser:
			if w.Key != "" {
				q.users[UserHash(w.Key)] = struct{}{}
			}
		}
	}
	return q
}

func (q *query) empty() bool { return len(q.ids) == 0 && len(q.users) == 0 && !q.oddJTI }

func (q *query) may(k *Keys) bool {
	if k.Unsure {
		return true
	}
	if k.HasJTI {
		if _, ok := q.ids[k.JTI]; ok {
			return true
		}
	}
	if k.User != 0 {
		if _, ok := q.users[k.User]; ok {
			return true
		}
	}
	if k.User2 != 0 {
		if _, ok := q.users[k.User2]; ok {
			return true
		}
	}
	return false
}
