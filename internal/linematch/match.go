package linematch

import (
	"bytes"
	"slices"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Hit is a line that matters to lineage: its offset in the block, its
// decoded event and the kinds it matched (never 0).
type Hit struct {
	Offset int
	Event  *audit.Event
	Kinds  Kind
}

// Counts tells what a Matcher saw in one block.
type Counts struct {
	// Candidates is the number of lines the byte-level search let through.
	Candidates int
	// Decoded is the number of candidates decoded (all of them).
	Decoded int
	// Hits is the number of lines Classify matched.
	Hits int
	// Malformed is the number of candidates that did not decode.
	Malformed int
}

// Matcher finds the lineage matches of blocks. Its zero value is ready to
// use; it reuses its buffers between calls and is not safe for concurrent
// use.
type Matcher struct {
	sc    blockScan
	spans []span
}

// span is one line of a block: block[start:end], without its newline.
type span struct{ start, end int }

// Block appends to dst the lines of block that Classify matches under s, in
// block order, each decoded once. block holds whole lines separated by '\n'
// (a last line without one is a line too). It is exact: a line is a hit iff
// Classify(audit.Decode(line), s) != 0; a line that does not decode never
// is.
//
// Only candidate lines are decoded: those holding "legacy-token", a
// credential id entry "JTI=<uuid>" that s watches, a key "username" whose
// value s follows, or a \u escape of a byte that could hide one of those. It searches only for what s needs: with no watch, for
// "legacy-token" and escapes alone.
func (m *Matcher) Block(dst []Hit, block []byte, s *Set) ([]Hit, Counts) {
	m.spans = m.candidates(m.spans[:0], block, s)
	c := Counts{Candidates: len(m.spans)}
	for _, sp := range m.spans {
		dst = m.decode(dst, &c, block[sp.start:sp.end], sp.start, s)
	}
	return dst, c
}

// BlockKeys does Block and AppendKeys in one pass over block, for a reader
// that keeps a lookback: it appends the hits to dst and the keys of every
// non-empty line to keys. Its hits are exactly Block's.
func (m *Matcher) BlockKeys(dst []Hit, keys []LineKeys, block []byte, s *Set) ([]Hit, []LineKeys, Counts) {
	sc := &m.sc
	sc.reset()
	sc.keyPasses(block)
	sc.legacys = marks(sc.legacys, block, 'y', legacyAt)
	gate, watching := gateOf(s)
	var c Counts
	var cur cursor
	for off := 0; off < len(block); {
		end := lineEnd(block, off)
		if end > off {
			k, esc, legacy := sc.line(block, off, end, &cur)
			keys = append(keys, LineKeys{Start: off, End: end, Keys: k})
			if legacy || esc&gate != 0 || (k.Unsure && watching) || s.mayMatchKeys(&k) {
				c.Candidates++
				dst = m.decode(dst, &c, block[off:end], off, s)
			}
		}
		off = end + 1
	}
	return dst, keys, c
}

// gateOf returns the escape classes that make a line a candidate under s,
// and whether s watches anything.
func gateOf(s *Set) (uint8, bool) {
	gate := uint8(escLegacy)
	if s.needsJTI() {
		gate |= escJTI
	}
	if s.needsUsers() {
		gate |= escUser
	}
	return gate, gate != escLegacy
}

// decode decodes a candidate line and appends it to dst when Classify
// matches it.
func (m *Matcher) decode(dst []Hit, c *Counts, line []byte, off int, s *Set) []Hit {
	c.Decoded++
	ev, err := audit.Decode(line)
	if err != nil {
		c.Malformed++
		return dst
	}
	if k := Classify(ev, s); k != 0 {
		c.Hits++
		dst = append(dst, Hit{Offset: off, Event: ev, Kinds: k})
	}
	return dst
}

// candidates appends the lines of block that may match under s, in order,
// each once.
func (m *Matcher) candidates(dst []span, block []byte, s *Set) []span {
	sc := &m.sc
	sc.reset()
	sc.escapes(block)
	sc.legacys = marks(sc.legacys, block, 'y', legacyAt)
	gate, _ := gateOf(s)
	base := len(dst)
	for _, e := range sc.escs {
		if e.class&gate != 0 {
			dst = appendLine(dst, block, e.pos)
		}
	}
	for _, k := range sc.legacys {
		dst = appendLine(dst, block, k)
	}
	if s.needsJTI() {
		sc.jtis = marks(sc.jtis, block, 'J', isJTIAt)
		for _, j := range sc.jtis {
			if s.mayWatchJTI(credentialAt(block, j)) {
				dst = appendLine(dst, block, j)
			}
		}
	}
	if s.needsUsers() {
		sc.users = marks(sc.users, block, 'm', usernameAt)
		for _, k := range sc.users {
			// A name holds no newline: read it within the block.
			if raw, plain, has := nameValue(block, k); has && s.followsName(raw, plain) {
				dst = appendLine(dst, block, k)
			}
		}
	}
	if len(dst)-base > 1 {
		c := dst[base:]
		slices.SortFunc(c, func(a, b span) int { return a.start - b.start })
		dst = append(dst[:base], slices.Compact(c)...)
	}
	return dst
}

// appendLine appends the line of block holding byte i, unless it is the
// last one of dst already.
func appendLine(dst []span, block []byte, i int) []span {
	if n := len(dst); n > 0 && dst[n-1].start <= i && i <= dst[n-1].end {
		return dst
	}
	return append(dst, lineAt(block, i))
}

// lineAt returns the line of block that holds byte i.
func lineAt(block []byte, i int) span {
	return span{bytes.LastIndexByte(block[:i], '\n') + 1, lineEnd(block, i)}
}
