package linematch

import (
	"bytes"

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
	spans []span
}

// span is one line of a block: block[start:end], without its newline.
type span struct{ start, end int }

// Block appends to dst the lines of block that Classify matches under s, in
// block order, each decoded once. block holds whole lines separated by '\n'
// (a last line without one is a line too). It is exact: a line is a hit iff
// Classify(audit.Decode(line), s) != 0, a line that does not decode never
// is.
func (m *Matcher) Block(dst []Hit, block []byte, s *Set) ([]Hit, Counts) {
	m.spans = m.candidates(m.spans[:0], block, s)
	c := Counts{Candidates: len(m.spans)}
	for _, sp := range m.spans {
		line := block[sp.start:sp.end]
		c.Decoded++
		ev, err := audit.Decode(line)
		if err != nil {
			c.Malformed++
			continue
		}
		if k := Classify(ev, s); k != 0 {
			c.Hits++
			dst = append(dst, Hit{Offset: sp.start, Event: ev, Kinds: k})
		}
	}
	return dst, c
}

// candidates appends the lines of block that may match under s.
func (m *Matcher) candidates(dst []span, block []byte, _ *Set) []span {
	for off := 0; off < len(block); {
		end := bytes.IndexByte(block[off:], '\n')
		if end < 0 {
			end = len(block)
		} else {
			end += off
		}
		dst = append(dst, span{off, end})
		off = end + 1
	}
	return dst
}
