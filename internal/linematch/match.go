package linematch

import (
	"bytes"
	"slices"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
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
	// Decoded is the number of candidates decoded: all but those that
	// may match only a followed minter and cannot be a sensitive action.
	Decoded int
	// Hits is the number of lines Classify matched.
	Hits int
	// Malformed is the number of candidates that did not decode.
	Malformed int
}

// Location is where the caller read a line or a block: a file of its own
// numbering, the offset and length.
type Location struct {
	File   uint32
	Length uint32
	Offset uint64
}

// Matcher finds the lineage matches of blocks. Its zero value is ready to
// use; it reuses its buffers between calls and is not safe for concurrent
// use.
type Matcher struct {
	sc    blockScan
	spans []span
	win   []span // candidates of one window

	// The pre-filter's marks of the block (nil: none) and the next of its
	// escapes and legacy-tokens the windows take.
	mk       *prefilter.Marks
	esc, leg int
}

// span is a candidate line of a block, block[start:end] without its
// newline, and the kinds it may match for (Legacy also stands for any
// reason that needs a decode: an escape, unsure keys).
type span struct {
	start, end int
	why        Kind
}

// mustDecode are the reasons a candidate is decoded without more ado: the
// actor kinds also need a sensitive action, which maySensitive rules out
// cheaply first.
const mustDecode = Token | Legacy

// Block appends to dst the lines of block that Classify matches under s, in
// block order, each decoded once. block holds whole lines separated by '\n'
// (a last line without one is a line too). It is exact: a line is a hit iff
// Classify(audit.Decode(line), s) != 0; a line that does not decode never
// is.
//
// Only candidate lines are decoded: those holding "legacy-token", a
// credential id entry "JTI=<uuid>" that s watches, a key "username" whose
// value s follows in a line that may be a sensitive action, or a \u escape
// of a byte that could hide one of those. It searches only for what s
// needs: with no watch, for "legacy-token" and escapes alone.
func (m *Matcher) Block(dst []Hit, block []byte, s *Set) ([]Hit, Counts) {
	return m.BlockMarked(dst, block, s, nil)
}

// BlockMarked is Block for a block that the pre-filter has just read
// (prefilter.Filter.Block): it takes the escapes and the "legacy-token"s of
// block from mk, the pre-filter's marks of it, rather than read block again
// for them. With mk nil it is Block.
func (m *Matcher) BlockMarked(dst []Hit, block []byte, s *Set, mk *prefilter.Marks) ([]Hit, Counts) {
	m.mk, m.esc, m.leg = mk, 0, 0
	m.spans = m.candidates(m.spans[:0], block, s)
	m.mk = nil
	c := Counts{Candidates: len(m.spans)}
	for _, sp := range m.spans {
		dst = m.decode(dst, &c, block[sp.start:sp.end], sp.start, sp.why, s)
	}
	return dst, c
}

// gateOf returns the escape classes that make a line a candidate under s:
// those that must be decoded (must) and those that matter only to a
// followed name (actor: the line is decoded only if it may be a sensitive
// action).
func gateOf(s *Set) (must, actor uint8) {
	must = escLegacy
	if s.needsJTI() {
		must |= escJTI
	}
	if s.needsUsers() {
		actor = escUser | escAct
	}
	return must, actor
}

// decode decodes a candidate line and appends it to dst when Classify
// matches it. A line that may only match an actor watch (why) and cannot
// be a sensitive action is not decoded.
func (m *Matcher) decode(dst []Hit, c *Counts, line []byte, off int, why Kind, s *Set) []Hit {
	if why&mustDecode == 0 && !maySensitive(line) {
		return dst
	}
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
	base := len(dst)
	for off := 0; off < len(block); {
		end := windowEnd(block, off)
		m.win = m.window(m.win[:0], block[off:end], off, s)
		for _, sp := range m.win {
			dst = append(dst, span{start: off + sp.start, end: off + sp.end, why: sp.why})
		}
		off = end
	}
	return mergeSpans(dst, base)
}

// window is the size of the windows the searches run over together, so
// that each pass reads from the nearest cache rather than the whole block
// from memory.
const window = 64 << 10

// windowEnd returns the end of the window of block that starts at off:
// just after the first newline from off+window on, or len(block). A window
// holds whole lines, so nothing the searches look for crosses its edge.
func windowEnd(block []byte, off int) int {
	e := off + window
	if e >= len(block) {
		return len(block)
	}
	if k := bytes.IndexByte(block[e:], '\n'); k >= 0 {
		return e + k + 1
	}
	return len(block)
}

// window appends the candidate lines of w, whole lines at off in the
// block, with offsets in w.
func (m *Matcher) window(dst []span, w []byte, off int, s *Set) []span {
	sc := &m.sc
	sc.reset()
	if m.mk == nil {
		sc.escapes(w)
		sc.legacys = marksLegacy(sc.legacys, w)
	} else {
		m.marked(off, off+len(w))
	}
	must, actor := gateOf(s)
	for _, e := range sc.escs {
		switch {
		case e.class&must != 0:
			dst = appendLine(dst, w, e.pos, Legacy)
		case e.class&actor != 0:
			dst = appendLine(dst, w, e.pos, ActorUser)
		}
	}
	for _, k := range sc.legacys {
		dst = appendLine(dst, w, k, Legacy)
	}
	sc.marksKeys(w, s.needsJTI(), s.needsUsers())
	if s.needsJTI() {
		for _, j := range sc.jtis {
			if why := s.jtiAt(w, j); why != 0 {
				dst = appendLine(dst, w, j, why)
			}
		}
	}
	if s.needsUsers() {
		dst = m.followed(dst, w, s)
	}
	return dst
}

// marked takes the pre-filter's marks of block[off:end] into the window's
// lists, with offsets in the window.
func (m *Matcher) marked(off, end int) {
	sc, mk := &m.sc, m.mk
	for ; m.esc < len(mk.Escapes) && mk.Escapes[m.esc].Pos < end; m.esc++ {
		if e := mk.Escapes[m.esc]; escClass[e.Byte] != 0 {
			sc.escs = append(sc.escs, escMark{e.Pos - off, escClass[e.Byte]})
		}
	}
	for ; m.leg < len(mk.Legacy) && mk.Legacy[m.leg] < end; m.leg++ {
		sc.legacys = append(sc.legacys, mk.Legacy[m.leg]-off)
	}
}

// followed appends the lines of block that may be sensitive actions and
// hold a "username" key whose value s follows. A name holds no newline: it
// is read within its line.
func (m *Matcher) followed(dst []span, block []byte, s *Set) []span {
	sc := &m.sc
	for _, k := range sc.acts { // marksKeys found them
		sc.lines = appendLine(sc.lines, block, k, ActorUser)
	}
	sc.lines = mergeSpans(sc.lines, 0)
	for _, ln := range sc.lines {
		line := block[ln.start:ln.end]
		sc.users = marksUsername(sc.users[:0], line)
		for _, k := range sc.users {
			if raw, plain, has := nameValue(line, k); has && s.followsName(raw, plain) {
				dst = appendLine(dst, block, ln.start, ActorUser)
				break
			}
		}
	}
	return dst
}

// mergeSpans sorts dst[base:] by line and merges the spans of one line.
func mergeSpans(dst []span, base int) []span {
	c := dst[base:]
	if len(c) < 2 {
		return dst
	}
	slices.SortFunc(c, func(a, b span) int { return a.start - b.start })
	out := c[:1]
	for _, sp := range c[1:] {
		if last := &out[len(out)-1]; sp.start == last.start {
			last.why |= sp.why
			continue
		}
		out = append(out, sp)
	}
	return dst[:base+len(out)]
}

// appendLine appends the line of block holding byte i with the reason why,
// or adds why to the last span of dst when it is that line.
func appendLine(dst []span, block []byte, i int, why Kind) []span {
	if n := len(dst); n > 0 && dst[n-1].start <= i && i <= dst[n-1].end {
		dst[n-1].why |= why
		return dst
	}
	sp := lineAt(block, i)
	sp.why = why
	return append(dst, sp)
}

// lineAt returns the line of block that holds byte i.
func lineAt(block []byte, i int) span {
	return span{start: lineStart(block, i), end: lineEnd(block, i)}
}

// lineStart returns the index of the first byte of the line that holds i.
// It searches back in windows with the vectorised forward search:
// bytes.LastIndexByte reads a byte at a time.
func lineStart(block []byte, i int) int {
	for hi := i; hi > 0; {
		lo := max(0, hi-512)
		last := -1
		for j := lo; ; {
			k := bytes.IndexByte(block[j:hi], '\n')
			if k < 0 {
				break
			}
			last = j + k
			j = last + 1
		}
		if last >= 0 {
			return last + 1
		}
		hi = lo
	}
	return 0
}
