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
		dst = m.decode(dst, &c, block[sp.start:sp.end], sp.start, s)
	}
	return dst, c
}

// Scan gates: the bytes whose \u escape makes a line a candidate, by what
// the set needs.
var (
	gateLegacy     = legacyBytes
	gateJTI        = union(legacyBytes, jtiBytes)
	gateUsers      = union(legacyBytes, userBytes)
	gateJTIAndUser = union(gateJTI, userBytes)
)

// candidates appends the lines of block that may match under s, in order,
// each once: those holding "legacy-token", a credential JTI watched in s,
// a user name followed in s, or an escape that could hide one of those.
// It searches only for what s needs.
func (m *Matcher) candidates(dst []span, block []byte, s *Set) []span {
	base := len(dst)
	jti, users := s.needsJTI(), s.needsUsers()
	gate := &gateLegacy
	switch {
	case jti && users:
		gate = &gateJTIAndUser
	case jti:
		gate = &gateJTI
	case users:
		gate = &gateUsers
	}
	dst = scanLegacy(dst, block)
	dst = scanEscapes(dst, block, gate)
	if jti {
		dst = scanJTIs(dst, block, s)
	}
	if users {
		dst = scanUsers(dst, block, s)
	}
	if len(dst)-base > 1 {
		c := dst[base:]
		slices.SortFunc(c, func(a, b span) int { return a.start - b.start })
		dst = append(dst[:base], slices.Compact(c)...)
	}
	return dst
}

// scanLegacy appends the lines holding "legacy-token", found by its byte
// 'y' (rare in audit lines).
func scanLegacy(dst []span, block []byte) []span {
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], 'y')
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if legacyAt(block, k) {
			sp := lineAt(block, k)
			dst = append(dst, sp)
			if i = sp.end + 1; i >= len(block) {
				return dst
			}
		}
	}
}

// scanEscapes appends the lines holding an escape of a byte of gate.
func scanEscapes(dst []span, block []byte, gate *byteSet) []span {
	for i := 0; i < len(block); {
		k := indexEscape(block[i:], gate)
		if k < 0 {
			return dst
		}
		sp := lineAt(block, i+k)
		dst = append(dst, sp)
		i = sp.end + 1
	}
	return dst
}

// scanJTIs appends the lines holding a credential id that s watches.
func scanJTIs(dst []span, block []byte, s *Set) []span {
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], 'J')
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if !isJTIAt(block, k) || !s.mayWatchJTI(credentialAt(block, k)) {
			continue
		}
		sp := lineAt(block, k)
		dst = append(dst, sp)
		if i = sp.end + 1; i >= len(block) {
			return dst
		}
	}
}

// scanUsers appends the lines holding an object under a key "user" whose
// name s follows (or that it cannot read).
func scanUsers(dst []span, block []byte, s *Set) []span {
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], '{')
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if !userKeyAt(block, k) {
			continue
		}
		// The object ends on its line: a newline is a space to JSON,
		// but never in a line; the search stops at the line's end.
		sp := lineAt(block, k)
		raw, plain, has, ok := userName(block[:sp.end], k)
		if ok && (!has || !s.followsName(raw, plain)) {
			continue
		}
		dst = append(dst, sp)
		if i = sp.end + 1; i >= len(block) {
			return dst
		}
	}
}

// lineAt returns the line of block that holds byte i.
func lineAt(block []byte, i int) span {
	start := bytes.LastIndexByte(block[:i], '\n') + 1
	end := bytes.IndexByte(block[i:], '\n')
	if end < 0 {
		end = len(block)
	} else {
		end += i
	}
	return span{start, end}
}

// BlockKeys does Block and AppendKeys in one pass over block, for a reader
// that keeps a lookback: it appends the hits to dst and the keys of every
// non-empty line to keys. Its hits are exactly Block's.
func (m *Matcher) BlockKeys(dst []Hit, keys []LineKeys, block []byte, s *Set) ([]Hit, []LineKeys, Counts) {
	var c Counts
	jti, users := s.needsJTI(), s.needsUsers()
	for off := 0; off < len(block); {
		end := bytes.IndexByte(block[off:], '\n')
		if end < 0 {
			end = len(block)
		} else {
			end += off
		}
		line := block[off:end]
		if len(line) > 0 {
			k := KeysOf(line)
			keys = append(keys, LineKeys{Start: off, End: end, Keys: k})
			if hasLegacy(line) || (k.Unsure && (jti || users)) || s.mayMatchKeys(&k) || (jti && hasOddJTI(line, s)) {
				c.Candidates++
				dst = m.decode(dst, &c, line, off, s)
			}
		}
		off = end + 1
	}
	return dst, keys, c
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

// hasLegacy reports whether line may carry the legacy-token annotation.
func hasLegacy(line []byte) bool {
	for i := 0; ; {
		k := bytes.IndexByte(line[i:], 'y')
		if k < 0 {
			break
		}
		k += i
		if legacyAt(line, k) {
			return true
		}
		i = k + 1
	}
	return indexEscape(line, &legacyBytes) >= 0
}

// hasOddJTI reports whether line holds a credential id that is not a uuid
// and that s may watch (sure keys carry uuids only).
func hasOddJTI(line []byte, s *Set) bool {
	if len(s.token.strs) == 0 && len(s.cred.strs) == 0 {
		return false
	}
	return len(scanJTIs(nil, line, s)) > 0
}
