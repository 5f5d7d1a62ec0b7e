package uses

import (
	"bytes"
	"math"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/linematch"
)

// noPin pins nothing (blockIndex.pin).
const noPin = math.MaxUint64

// logSlack is how much earlier than a block's last line a line before it
// in the block may have been logged: the apiserver writes its audit events
// in the order it stamps them (stageTimestamp), up to the jitter between
// stamping and writing (under 3 ms in the genuine logs of FIELD-NOTES).
const logSlack = 10 * time.Second

// blockEntry is one block read: where, when (the read clock, Unix
// nanoseconds), the latest requestReceivedTimestamp a line of it may have
// (Unix nanoseconds: the read time, or its last line's stageTimestamp plus
// logSlack when that is earlier) and the bytes indexed before it (for the
// pinned size).
type blockEntry struct {
	loc    linematch.Location
	read   int64
	latest int64
	cum    uint64
}

// blockIndex is the lookback index: a bounded ring of the blocks read
// recently, one entry per block (its location and read time), never per
// line. A new watch's search re-reads the blocks it may match and runs the
// matcher on them: the cost falls on a watch's arrival, not on every line.
// It holds at most maxEntries blocks and maxBytes bytes of log. Not safe for
// concurrent use.
type blockIndex struct {
	ring       []blockEntry
	head, n    int
	maxEntries int
	maxBytes   uint64
	bytes      uint64 // bytes held
	added      uint64 // bytes ever added
	first      uint64 // sequence number of the oldest entry
	pin        uint64 // entries numbered pin or later are never evicted
	dropped    uint64 // entries evicted early, the index being full
}

func newBlockIndex(maxBytes uint64, maxEntries int) *blockIndex {
	return &blockIndex{maxBytes: max(maxBytes, 1), maxEntries: max(maxEntries, 1), pin: noPin}
}

// next returns the sequence number the next add gives.
func (x *blockIndex) next() uint64 { return x.first + uint64(x.n) }

func (x *blockIndex) at(i int) *blockEntry { return &x.ring[(x.head+i)%len(x.ring)] }

// pinnedBytes returns the bytes of the entries pinned.
func (x *blockIndex) pinnedBytes() uint64 {
	if x.pin >= x.next() {
		return 0
	}
	return x.added - x.at(int(max(x.pin, x.first)-x.first)).cum
}

// pinnedEntries returns the number of entries pinned.
func (x *blockIndex) pinnedEntries() int {
	if x.pin >= x.next() {
		return 0
	}
	return int(x.next() - max(x.pin, x.first))
}

// room reports whether a block of size bytes can be added without evicting
// a pinned entry.
func (x *blockIndex) room(size int) bool {
	return x.pinnedBytes()+uint64(size) <= x.maxBytes && x.pinnedEntries() < x.maxEntries
}

// add appends a block read at read, whose last line was logged at logged
// (zero: unknown), and returns its sequence number. It evicts the oldest
// entries first while the index is full, unless one is pinned: then it
// adds nothing and returns false.
func (x *blockIndex) add(loc linematch.Location, read, logged time.Time) (uint64, bool) {
	for x.n > 0 && (x.n == x.maxEntries || x.bytes+uint64(loc.Length) > x.maxBytes) {
		if x.first >= x.pin {
			return 0, false
		}
		x.pop()
		x.dropped++
	}
	if x.n == len(x.ring) {
		x.grow()
	}
	seq := x.next()
	latest := read.UnixNano()
	if !logged.IsZero() {
		latest = min(latest, logged.Add(logSlack).UnixNano())
	}
	*x.at(x.n) = blockEntry{loc: loc, read: read.UnixNano(), latest: latest, cum: x.added}
	x.n++
	x.bytes += uint64(loc.Length)
	x.added += uint64(loc.Length)
	return seq, true
}

func (x *blockIndex) pop() {
	x.bytes -= uint64(x.ring[x.head].loc.Length)
	x.ring[x.head] = blockEntry{}
	x.head = (x.head + 1) % len(x.ring)
	x.n--
	x.first++
}

// grow doubles the ring, up to maxEntries.
func (x *blockIndex) grow() {
	size := min(max(2*len(x.ring), 64), x.maxEntries)
	ring := make([]blockEntry, size)
	for i := 0; i < x.n; i++ {
		ring[i] = *x.at(i)
	}
	x.ring, x.head = ring, 0
}

// evict drops the oldest entries read before now-window, except pinned
// ones, and returns how many it dropped.
func (x *blockIndex) evict(now time.Time, window time.Duration) int {
	limit := now.Add(-window).UnixNano()
	n := 0
	for x.n > 0 && x.first < x.pin && x.ring[x.head].read < limit {
		x.pop()
		n++
	}
	if x.n == 0 && len(x.ring) > 64 {
		x.ring, x.head = nil, 0 // give the memory back when idle
	}
	return n
}

// find appends to dst the locations of the entries that may hold a request
// received at or after from (Unix nanoseconds) and that keep accepts (nil:
// all), oldest first.
func (x *blockIndex) find(dst []linematch.Location, from int64, keep func(linematch.Location) bool) []linematch.Location {
	for i := 0; i < x.n; i++ {
		e := x.at(i)
		if e.latest >= from && (keep == nil || keep(e.loc)) {
			dst = append(dst, e.loc)
		}
	}
	return dst
}

// stageKey is the key of an audit event's stageTimestamp. A value cannot
// spell it (a quote inside a string is escaped), and in audit.Event's field
// order the top-level one comes after requestObject and responseObject;
// only an annotation key could follow it, and those the apiserver does not
// set itself are prefixed ("<webhook>/..."). A time that does not parse
// leaves the block's bound at its read time.
var stageKey = []byte(`"stageTimestamp":"`)

// lastLogged returns the stageTimestamp of the last line of block, zero
// when it has none that parses.
func lastLogged(block []byte) time.Time {
	end := len(block)
	if end > 0 && block[end-1] == '\n' {
		end--
	}
	line := block[bytes.LastIndexByte(block[:end], '\n')+1 : end]
	k := bytes.LastIndex(line, stageKey)
	if k < 0 {
		return time.Time{}
	}
	v := line[k+len(stageKey):]
	q := bytes.IndexByte(v, '"')
	if q < 0 {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, string(v[:q]))
	if err != nil {
		return time.Time{}
	}
	return t
}
