package prefilter

import (
	"bytes"

	"github.com/gofiber/utils/v2/simd"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Span is one line of a block: block[Start:End], without its newline.
type Span struct {
	Start, End int
}

// Candidates appends to dst the lines of block that may hold a token create,
// in block order, each once. block holds whole lines separated by '\n'; a
// last line without a newline is treated as a line too.
func Candidates(dst []Span, block []byte) []Span { return candidates(dst, block, nil) }

// candidates is Candidates that also records mk's marks when mk is not nil.
// It searches for the literal, then for escapes, and merges the two lists.
// Without marks, each search leaves a line at its first find; with them,
// each reads on to record every mark (markLiteral, markEscapes).
func candidates(dst []Span, block []byte, mk *Marks) []Span {
	base := len(dst)
	if mk == nil {
		dst = literal(dst, block)
	} else {
		dst = markLiteral(dst, block, mk)
	}
	nlit := len(dst)
	if mk == nil {
		dst = escaped(dst, block)
	} else {
		dst = markEscapes(dst, block, mk)
	}
	if len(dst) > nlit && nlit > base {
		dst = merge(dst, base, nlit)
	}
	return dst
}

// Escape is a \u00XX escape of a block: the index of its backslash and the
// byte it writes. (An escaped backslash followed by "u00XX" is reported
// too: a false escape, never a missed one.)
type Escape struct {
	Pos  int
	Byte byte
}

// Marks are what the pre-filter's searches of a block saw on their way that
// a later search of the same block can use instead of reading it again, in
// block order: every \u00XX escape (the escape search stops at each
// backslash) and every "legacy-token" that ends a string (the literal
// search stops at each 'k' with a quote three bytes on; lineage matches
// the annotation authentication.k8s.io/legacy-token, whose key ends so
// unless an escape writes its end).
type Marks struct {
	Escapes []Escape
	Legacy  []int // the index of the 'l' of each `legacy-token"`
}

// maxKeptMarks bounds the marks whose memory a Filter keeps between
// blocks: a block of escapes does not pin its list.
const maxKeptMarks = 1 << 14

// reset empties the lists, keeping their memory unless it is large.
func (mk *Marks) reset() {
	if cap(mk.Escapes) > maxKeptMarks {
		mk.Escapes = nil
	}
	if cap(mk.Legacy) > maxKeptMarks {
		mk.Legacy = nil
	}
	mk.Escapes, mk.Legacy = mk.Escapes[:0], mk.Legacy[:0]
}

// literal finds lines holding `"token"` by searching for its rarest byte.
func literal(dst []Span, block []byte) []Span {
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], 'k')
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if k < 3 || block[k-1] != 'o' || block[k-2] != 't' || block[k-3] != '"' ||
			k+3 >= len(block) || block[k+1] != 'e' || block[k+2] != 'n' || block[k+3] != '"' {
			continue
		}
		s := lineAt(block, k)
		dst = append(dst, s)
		i = s.End
		if i >= len(block) {
			return dst
		}
	}
}

// markLiteral is literal that also records the "legacy-token"s ending a
// string. It stops only at a 'k' with a quote three bytes on, as in
// "token" and in "legacy-token" ending a string (the annotation's key;
// written otherwise, an escape of it makes the line a candidate), so most
// 'k's of a line cost nothing.
func markLiteral(dst []Span, block []byte, mk *Marks) []Span {
	base := len(dst)
	for i := 0; ; {
		k := simd.MemchrPair(block[i:], 'k', '"', 3)
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if k < 3 || block[k-1] != 'o' || block[k-2] != 't' {
			continue
		}
		switch {
		case block[k-3] == '"' && block[k+1] == 'e' && block[k+2] == 'n':
			if n := len(dst); n == base || k >= dst[n-1].End {
				dst = append(dst, lineAt(block, k))
			}
		case k >= 9 && string(block[k-9:k+4]) == `legacy-token"`:
			mk.Legacy = append(mk.Legacy, k-9)
		}
	}
}

// markEscapes records every escape of block in mk and appends the lines
// holding one of a letter of "token".
func markEscapes(dst []Span, block []byte, mk *Marks) []Span {
	base := len(dst)
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], '\\')
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		c, ok := escapeAt(block, k)
		if !ok {
			continue
		}
		mk.Escapes = append(mk.Escapes, Escape{Pos: k, Byte: c})
		if n := len(dst); tokenLetters[c] && (n == base || k >= dst[n-1].End) {
			dst = append(dst, lineAt(block, k))
		}
	}
}

// escaped finds lines holding a \u escape of one of the letters of "token".
func escaped(dst []Span, block []byte) []Span {
	for i := 0; ; {
		b := IndexEscape(block[i:], &tokenLetters)
		if b < 0 {
			return dst
		}
		s := lineAt(block, i+b)
		dst = append(dst, s)
		i = s.End
		if i >= len(block) {
			return dst
		}
	}
}

// escapeAt reads the \u00XX escape whose backslash is at k, if it is one,
// and returns the byte it writes.
func escapeAt(b []byte, k int) (byte, bool) {
	if k+5 >= len(b) || b[k+1] != 'u' || b[k+2] != '0' || b[k+3] != '0' {
		return 0, false
	}
	hi, ok1 := unhex(b[k+4])
	lo, ok2 := unhex(b[k+5])
	return hi<<4 | lo, ok1 && ok2
}

// Letters is a set of bytes.
type Letters [256]bool

// LetterSet returns the set of the bytes of words.
func LetterSet(words ...string) Letters {
	var l Letters
	for _, w := range words {
		for i := 0; i < len(w); i++ {
			l[w[i]] = true
		}
	}
	return l
}

var (
	tokenLetters  = LetterSet("token")
	createLetters = LetterSet("create")
	saLetters     = LetterSet("serviceaccounts")
)

// IndexEscape returns the index of the first \u00XX escape in b that writes
// a byte of set, or -1. It may report an escaped backslash followed by
// "u00XX": a false candidate, never a missed one. JSON can write a byte
// below 0x80 only as itself or as such an escape (\" \\ \/ \b \f \n \r \t
// write only '"', '\\', '/' and control bytes), so a search for a literal
// byte outside those misses nothing once IndexEscape has found no escape of it.
func IndexEscape(b []byte, set *Letters) int {
	for i := 0; ; {
		k := bytes.IndexByte(b[i:], '\\')
		if k < 0 {
			return -1
		}
		k += i
		if c, ok := escapeAt(b, k); ok && set[c] {
			return k
		}
		i = k + 1
	}
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// mayHold reports whether line can hold the JSON string value written
// quoted: it has the literal or an escape of one of its letters.
func mayHold(line []byte, quoted []byte, set *Letters) bool {
	return bytes.Contains(line, quoted) || IndexEscape(line, set) >= 0
}

var (
	quotedCreate = []byte(`"create"`)
	quotedSA     = []byte(`"serviceaccounts"`)
)

// Plausible reports whether a candidate line can hold the other two values
// of a token create, "create" (verb) and "serviceaccounts" (resource),
// literally or escaped. It drops most decoys without decoding them.
func Plausible(line []byte) bool {
	return mayHold(line, quotedCreate, &createLetters) && mayHold(line, quotedSA, &saLetters)
}

// lineAt returns the line of block that holds byte i.
func lineAt(block []byte, i int) Span {
	start := bytes.LastIndexByte(block[:i], '\n') + 1
	end := bytes.IndexByte(block[i:], '\n')
	if end < 0 {
		end = len(block)
	} else {
		end += i
	}
	return Span{Start: start, End: end}
}

// merge sorts dst[base:] given that dst[base:mid] and dst[mid:] are each
// sorted and duplicate-free, and removes duplicates across the two.
func merge(dst []Span, base, mid int) []Span {
	a := append([]Span(nil), dst[base:mid]...)
	b := append([]Span(nil), dst[mid:]...)
	out := dst[:base]
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || (len(a) > 0 && a[0].Start < b[0].Start):
			out = append(out, a[0])
			a = a[1:]
		case len(a) == 0 || b[0].Start < a[0].Start:
			out = append(out, b[0])
			b = b[1:]
		default: // same line found by both searches
			out = append(out, a[0])
			a, b = a[1:], b[1:]
		}
	}
	return out
}

// Match is a decoded token create and the offset of its line in the block.
type Match struct {
	Offset int
	Event  *audit.Event
}

// Counts tells what a Filter saw in one block.
type Counts struct {
	// Candidates is the number of lines that may hold "token".
	Candidates int
	// Decoded is the number of candidates that were decoded.
	Decoded int
	// Matches is the number of token creates among them.
	Matches int
	// Malformed is the number of decoded candidates that were not valid.
	Malformed int
	// MalformedFields is the number of token creates with a field of the
	// wrong JSON type: they are matches, with the field left absent.
	MalformedFields int
}

// Filter finds the token creates of blocks. Its zero value is ready to use;
// it reuses its buffers between calls and is not safe for concurrent use.
type Filter struct {
	spans []Span
	marks Marks
}

// Marks returns the marks of the last block passed to Block, valid until
// the next call.
func (f *Filter) Marks() *Marks { return &f.marks }

// Block appends to dst the token creates of block, in order.
func (f *Filter) Block(dst []Match, block []byte) ([]Match, Counts) {
	f.marks.reset()
	f.spans = candidates(f.spans[:0], block, &f.marks)
	c := Counts{Candidates: len(f.spans)}
	for _, s := range f.spans {
		line := block[s.Start:s.End]
		if !Plausible(line) {
			continue
		}
		c.Decoded++
		ev, err := audit.Decode(line)
		if err != nil {
			c.Malformed++
			continue
		}
		if !ev.IsTokenCreate() {
			continue
		}
		c.Matches++
		if len(ev.Malformed) > 0 {
			c.MalformedFields++
		}
		dst = append(dst, Match{Offset: s.Start, Event: ev})
	}
	return dst, c
}
