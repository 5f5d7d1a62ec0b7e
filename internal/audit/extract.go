package audit

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"hash"
	"iter"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Extractor reads one audit log line handed over in pieces, however long,
// in bounded memory, and gives the event Decode and then Bound would give:
// it keeps only the fields Event holds, each cut to its bound as it
// streams by (strings to a prefix, their length and SHA-256; lists and
// maps to the entries Bound can keep), and skips every other value without
// storing it. Use NewExtractor, Write the line's bytes in order, then
// Finish; Close releases it early.
type Extractor struct {
	in   []byte
	eof  bool
	next func() (struct{}, bool)
	stop func()
	done bool
	res  []byte   // the reduced line: every field kept, bounded
	cut  []string // fields whose kept value was cut
	err  error
	h    hash.Hash
}

// NewExtractor returns an Extractor for one line.
func NewExtractor() *Extractor {
	x := &Extractor{h: sha256.New()}
	x.next, x.stop = iter.Pull(x.run)
	return x
}

// Write hands over the next bytes of the line; p is not kept.
func (x *Extractor) Write(p []byte) {
	if x.done || len(p) == 0 {
		return
	}
	x.in = p
	if _, ok := x.next(); !ok {
		x.done = true
	}
	x.in = nil
}

// Finish ends the line and returns its event, Bound applied, with the
// number of bytes of the reduced line it was decoded from. The error is
// Decode's for a line that is not one JSON object.
func (x *Extractor) Finish() (*Event, int, error) {
	x.eof = true
	if !x.done {
		x.next()
		x.done = true
	}
	x.stop()
	if x.err != nil {
		return nil, 0, x.err
	}
	e, err := Decode(x.res)
	if err != nil {
		return nil, 0, err
	}
	for _, m := range x.cut {
		if slices.Contains(e.Malformed, m) || (e.RequestObject == nil && strings.HasPrefix(m, "requestObject.")) {
			continue
		}
		e.Truncated = append(e.Truncated, m)
	}
	Bound(e)
	return e, len(x.res), nil
}

// Close releases the Extractor; it is safe after Finish and twice.
func (x *Extractor) Close() {
	x.done = true
	x.stop()
}

// errStopped unwinds the parser when the Extractor is closed early.
var errStopped = errors.New("extractor closed")

type syntaxError struct{ msg string }

func (x *Extractor) run(yield func(struct{}) bool) {
	p := &parser{x: x, yield: yield}
	defer func() {
		if r := recover(); r != nil {
			switch err := r.(type) {
			case syntaxError:
				x.err = errors.New("decode audit event: " + err.msg)
			case error:
				if err != errStopped {
					panic(r)
				}
			default:
				panic(r)
			}
		}
	}()
	p.ws()
	c, ok := p.peek()
	if !ok {
		x.err = errors.New("decode audit event: empty line")
		return
	}
	if c != '{' {
		x.err = errors.New("decode audit event: not a JSON object")
		return
	}
	p.pos++
	frag, cut := p.object(topSchema, "")
	p.ws()
	if _, ok := p.peek(); ok {
		p.fail("invalid character after top-level value")
	}
	x.res, x.cut = frag, cut
}

// Kinds of the fields Event holds.
const (
	kString = iota
	kInt
	kObject
	kList     // of strings, the first entries kept
	kListLast // of strings, the last entries kept
	kStringMap
	kListMap
)

type field struct {
	name string
	kind int
	max  int
	obj  []field
}

var userSchema = []field{
	{name: "username", max: MaxIdentity}, {name: "uid", max: MaxIdentity},
	{name: "groups", kind: kList}, {name: "extra", kind: kListMap},
}

var topSchema = []field{
	{name: "level", max: MaxString}, {name: "auditID", max: MaxString}, {name: "stage", max: MaxString},
	{name: "requestURI", max: MaxString}, {name: "verb", max: MaxString},
	{name: "user", kind: kObject, obj: userSchema}, {name: "impersonatedUser", kind: kObject, obj: userSchema},
	{name: "sourceIPs", kind: kListLast}, {name: "userAgent", max: MaxString},
	{name: "objectRef", kind: kObject, obj: strings7("resource", "namespace", "name", "uid", "apiGroup", "apiVersion", "subresource")},
	{name: "responseStatus", kind: kObject, obj: append(strings7("status", "message", "reason"), field{name: "code", kind: kInt})},
	{name: "requestObject", kind: kObject, obj: []field{{name: "spec", kind: kObject, obj: []field{
		{name: "audiences", kind: kList}, {name: "expirationSeconds", kind: kInt},
		{name: "boundObjectRef", kind: kObject, obj: strings7("kind", "apiVersion", "name", "uid")},
	}}}},
	{name: "requestReceivedTimestamp", max: MaxString}, {name: "stageTimestamp", max: MaxString},
	{name: "annotations", kind: kStringMap},
}

func strings7(names ...string) []field {
	f := make([]field, len(names))
	for i, n := range names {
		f[i] = field{name: n, max: MaxString}
	}
	return f
}

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

type parser struct {
	x     *Extractor
	yield func(struct{}) bool
	pos   int
	depth int
}

func (p *parser) fail(msg string) { panic(syntaxError{msg}) }

// peek returns the next byte without consuming it; false at the line's end.
func (p *parser) peek() (byte, bool) {
	for p.pos >= len(p.x.in) {
		if p.x.eof {
			return 0, false
		}
		p.pos = 0
		p.x.in = nil
		if !p.yield(struct{}{}) {
			panic(errStopped)
		}
	}
	return p.x.in[p.pos], true
}

func (p *parser) byte() byte {
	c, ok := p.peek()
	if !ok {
		p.fail("unexpected end of JSON input")
	}
	p.pos++
	return c
}

func (p *parser) ws() {
	for {
		c, ok := p.peek()
		if !ok || (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			return
		}
		p.pos++
	}
}

func (p *parser) expect(want byte) {
	p.ws()
	if p.byte() != want {
		p.fail("invalid character, want " + string(want))
	}
}

func (p *parser) push() {
	p.depth++
	if p.depth > maxDepth {
		p.fail("exceeded max depth")
	}
}

// str reads a string after its opening quote, keeping at most max decoded
// bytes: the result is Cut's for the whole string, and whether it was cut.
// max 0 keeps nothing (a skipped value).
func (p *parser) str(max int) (string, bool) {
	s := strSink{h: p.x.h, max: max}
	surrogate := rune(-1) // a high surrogate waiting for its pair
	for {
		if surrogate < 0 && p.asciiRun(&s) {
			continue
		}
		c := p.byte()
		if surrogate >= 0 && c != '\\' {
			s.rune(utf8.RuneError)
			surrogate = -1
		}
		switch {
		case c == '"':
			return s.result()
		case c < 0x20:
			p.fail("invalid character in string literal")
		case c == '\\':
			surrogate = p.escape(&s, surrogate)
		case c < 0x80:
			s.write([]byte{c})
		default:
			p.utf8Seq(&s, c)
		}
	}
}

// strSink keeps the first max decoded bytes of a string and counts them
// all; once the string outgrows max it hashes it whole, for Cut's sum.
type strSink struct {
	h       hash.Hash
	max     int
	keep    []byte
	total   int
	hashing bool
	rb      [utf8.UTFMax]byte
}

func (s *strSink) write(b []byte) {
	if s.total+len(b) > s.max && !s.hashing && s.max > 0 {
		s.hashing = true
		s.h.Reset()
		s.h.Write(s.keep)
	}
	if s.hashing {
		s.h.Write(b)
	}
	if room := s.max - len(s.keep); room > 0 {
		s.keep = append(s.keep, b[:min(room, len(b))]...)
	}
	s.total += len(b)
}

func (s *strSink) rune(r rune) { s.write(s.rb[:utf8.EncodeRune(s.rb[:], r)]) }

// result is Cut's for the whole string, and whether it was cut.
func (s *strSink) result() (string, bool) {
	if s.max <= 0 {
		return "", false
	}
	if s.total <= s.max {
		return string(s.keep), false
	}
	return cutSum(string(s.keep), s.total, s.h.Sum(nil), s.max), true
}

// asciiRun takes a run of plain ASCII bytes within the current piece into
// s, reporting whether there was one.
func (p *parser) asciiRun(s *strSink) bool {
	if p.pos >= len(p.x.in) {
		return false
	}
	in := p.x.in[p.pos:]
	n := 0
	for n < len(in) && in[n] >= 0x20 && in[n] < 0x80 && in[n] != '"' && in[n] != '\\' {
		n++
	}
	if n == 0 {
		return false
	}
	if s.max > 0 {
		s.write(in[:n])
	}
	p.pos += n
	return true
}

// escape decodes the escape after a backslash into s. pending is a high
// surrogate waiting for its pair, or -1; escape returns the new one.
func (p *parser) escape(s *strSink, pending rune) rune {
	e := p.byte()
	if e == 'u' {
		return p.unicodeEscape(s, pending)
	}
	if pending >= 0 {
		s.rune(utf8.RuneError)
	}
	switch e {
	case '"', '\\', '/':
		s.write([]byte{e})
	case 'b':
		s.write([]byte{'\b'})
	case 'f':
		s.write([]byte{'\f'})
	case 'n':
		s.write([]byte{'\n'})
	case 'r':
		s.write([]byte{'\r'})
	case 't':
		s.write([]byte{'\t'})
	default:
		p.fail("invalid escape in string literal")
	}
	return -1
}

// unicodeEscape decodes a \u escape after its 'u' into s, pairing it with
// pending as encoding/json does; it returns the surrogate left pending.
func (p *parser) unicodeEscape(s *strSink, pending rune) rune {
	r := p.hex4()
	if pending >= 0 {
		if d := utf16.DecodeRune(pending, r); d != utf8.RuneError {
			s.rune(d)
			return -1
		}
		s.rune(utf8.RuneError)
	}
	if utf16.IsSurrogate(r) {
		return r
	}
	s.rune(r)
	return -1
}

// utf8Seq reads the continuation bytes after c, the first byte of a
// non-ASCII sequence, and decodes them into s as encoding/json does: each
// invalid byte becomes U+FFFD.
func (p *parser) utf8Seq(s *strSink, c byte) {
	seq := []byte{c}
	for len(seq) < utf8.UTFMax {
		n, ok := p.peek()
		if !ok || n < 0x80 || n > 0xBF {
			break
		}
		seq = append(seq, n)
		p.pos++
	}
	for len(seq) > 0 {
		r, size := utf8.DecodeRune(seq)
		if r == utf8.RuneError && size == 1 {
			s.rune(utf8.RuneError)
		} else {
			s.write(seq[:size])
		}
		seq = seq[size:]
	}
}

func (p *parser) hex4() rune {
	var r rune
	for range 4 {
		c := p.byte()
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			p.fail("invalid character in \\u escape")
		}
		r = r<<4 | rune(c)
	}
	return r
}

// number reads a number literal, keeping its first 32 bytes.
func (p *parser) number() []byte {
	var lit []byte
	take := func() byte {
		c := p.byte()
		if len(lit) < 32 {
			lit = append(lit, c)
		}
		return c
	}
	digits := func() int {
		n := 0
		for {
			c, ok := p.peek()
			if !ok || c < '0' || c > '9' {
				return n
			}
			take()
			n++
		}
	}
	if c, _ := p.peek(); c == '-' {
		take()
	}
	if c, ok := p.peek(); ok && c == '0' {
		take()
	} else if digits() == 0 {
		p.fail("invalid character in numeric literal")
	}
	if c, ok := p.peek(); ok && c == '.' {
		take()
		if digits() == 0 {
			p.fail("invalid character after decimal point")
		}
	}
	if c, ok := p.peek(); ok && (c == 'e' || c == 'E') {
		take()
		if c, ok := p.peek(); ok && (c == '+' || c == '-') {
			take()
		}
		if digits() == 0 {
			p.fail("invalid character in exponent")
		}
	}
	return lit
}

func (p *parser) literal(word string) {
	for i := 1; i < len(word); i++ {
		if p.byte() != word[i] {
			p.fail("invalid literal")
		}
	}
}

// skip reads and drops any value, returning a placeholder of its JSON type.
func (p *parser) skip() []byte {
	p.ws()
	c, ok := p.peek()
	if !ok {
		p.fail("unexpected end of JSON input")
	}
	switch {
	case c == '"':
		p.pos++
		p.str(0)
		return []byte(`""`)
	case c == '{':
		p.pos++
		p.push()
		p.ws()
		if c, _ := p.peek(); c == '}' {
			p.pos++
		} else {
			for {
				p.expect('"')
				p.str(0)
				p.expect(':')
				p.skip()
				p.ws()
				if c := p.byte(); c == '}' {
					break
				} else if c != ',' {
					p.fail("invalid character after object key:value pair")
				}
			}
		}
		p.depth--
		return []byte("{}")
	case c == '[':
		p.pos++
		p.push()
		p.ws()
		if c, _ := p.peek(); c == ']' {
			p.pos++
		} else {
			for {
				p.skip()
				p.ws()
				if c := p.byte(); c == ']' {
					break
				} else if c != ',' {
					p.fail("invalid character after array element")
				}
			}
		}
		p.depth--
		return []byte("[]")
	case c == 't':
		p.pos++
		p.literal("true")
		return []byte("false")
	case c == 'f':
		p.pos++
		p.literal("false")
		return []byte("false")
	case c == 'n':
		p.pos++
		p.literal("null")
		return []byte("null")
	case c == '-' || ('0' <= c && c <= '9'):
		p.number()
		return []byte("0")
	}
	p.fail("invalid character looking for beginning of value")
	return nil
}

func quote(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// object reads the members of an object of schema fs after its '{': the
// last occurrence of each known key, bounded; unknown keys are skipped.
func (p *parser) object(fs []field, path string) ([]byte, []string) {
	p.push()
	vals := make([][]byte, len(fs))
	cuts := make([][]string, len(fs))
	p.ws()
	if c, _ := p.peek(); c == '}' {
		p.pos++
	} else {
		for {
			p.expect('"')
			key, long := p.str(64)
			p.expect(':')
			i := -1
			if !long {
				i = slices.IndexFunc(fs, func(f field) bool { return f.name == key })
			}
			if i < 0 {
				p.skip()
			} else {
				vals[i], cuts[i] = p.value(fs[i], path+fs[i].name)
			}
			p.ws()
			c := p.byte()
			if c == '}' {
				break
			}
			if c != ',' {
				p.fail("invalid character after object key:value pair")
			}
		}
	}
	p.depth--
	out := []byte{'{'}
	var cut []string
	for i, v := range vals {
		if v == nil {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(append(append(out, quote(fs[i].name)...), ':'), v...)
		cut = append(cut, cuts[i]...)
	}
	return append(out, '}'), cut
}

// value reads the value of a known field.
func (p *parser) value(f field, path string) ([]byte, []string) {
	p.ws()
	c, ok := p.peek()
	if !ok {
		p.fail("unexpected end of JSON input")
	}
	if c == 'n' {
		return p.skip(), nil
	}
	if f.kind == kObject && c == '{' {
		p.pos++
		return p.object(f.obj, path+".")
	}
	switch {
	case f.kind == kString && c == '"':
		p.pos++
		s, cut := p.str(f.max)
		return quote(s), marked(path, cut)
	case f.kind == kInt && (c == '-' || ('0' <= c && c <= '9')):
		lit := p.number()
		if len(lit) > 24 {
			return []byte("0.5"), nil // no integer: the field is malformed
		}
		return lit, nil
	case (f.kind == kList || f.kind == kListLast) && c == '[':
		p.pos++
		l, bad, cut := p.list(f.kind == kListLast)
		return listJSON(l, bad), marked(path, cut)
	case (f.kind == kStringMap || f.kind == kListMap) && c == '{':
		p.pos++
		out, cut := p.mapping(f.kind == kListMap)
		return out, marked(path, cut)
	}
	return p.placeholder(f, c), nil
}

// placeholder skips a value of the wrong JSON type for f, which starts
// with c, and returns a placeholder of that type that keeps it malformed.
func (p *parser) placeholder(f field, c byte) []byte {
	if f.kind == kString && c != '"' {
		return p.skip()
	}
	ph := p.skip()
	if string(ph) == "0" {
		ph = []byte(`""`) // a number where none is expected
	}
	return ph
}

// marked is the truncation mark of the value at path: path when cut.
func marked(path string, cut bool) []string {
	if cut {
		return []string{path}
	}
	return nil
}

func listJSON(l []string, bad bool) []byte {
	out := []byte{'['}
	for i, s := range l {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, quote(s)...)
	}
	if bad {
		if len(l) > 0 {
			out = append(out, ',')
		}
		out = append(out, '0')
	}
	return append(out, ']')
}

// list reads an array of strings after its '[', keeping MaxEntries+1 of
// its entries (the first, or the last), each cut to MaxEntry: enough for
// Bound to decide as it would on the whole list. bad reports an entry of
// another type than string or null.
func (p *parser) list(last bool) (l []string, bad, cut bool) {
	p.push()
	var cuts []bool
	p.ws()
	if c, _ := p.peek(); c == ']' {
		p.pos++
		p.depth--
		return []string{}, false, false
	}
	for {
		p.ws()
		c, ok := p.peek()
		if !ok {
			p.fail("unexpected end of JSON input")
		}
		keep := last || len(l) <= MaxEntries
		switch {
		case c == '"' && keep:
			p.pos++
			s, ct := p.str(MaxEntry)
			l, cuts = append(l, s), append(cuts, ct)
		case c == 'n' && keep:
			p.skip()
			l, cuts = append(l, ""), append(cuts, false)
		case c == '"' || c == 'n':
			p.skip()
		default:
			p.skip()
			bad = true
		}
		if len(l) > MaxEntries+1 {
			l, cuts = l[1:], cuts[1:]
		}
		p.ws()
		if c := p.byte(); c == ']' {
			break
		} else if c != ',' {
			p.fail("invalid character after array element")
		}
	}
	p.depth--
	return l, bad, slices.Contains(cuts, true)
}

type entry struct {
	key  string
	str  string
	list []string
	null bool
	cut  bool
}

// mapping reads an object of strings (or of lists of strings, lists) after
// its '{', keeping the MaxEntries+1 smallest keys (cut to MaxEntry), each
// with its last value: enough for Bound to decide as it would on the whole
// map.
func (p *parser) mapping(lists bool) ([]byte, bool) {
	p.push()
	var kept []entry
	bad := false
	p.ws()
	if c, _ := p.peek(); c == '}' {
		p.pos++
	} else {
		for {
			p.expect('"')
			k, kcut := p.str(MaxEntry)
			p.expect(':')
			e, ebad := p.mapValue(entry{key: k, cut: kcut}, lists)
			bad = bad || ebad
			kept = keepSmallest(kept, e)
			p.ws()
			c := p.byte()
			if c == '}' {
				break
			}
			if c != ',' {
				p.fail("invalid character after object key:value pair")
			}
		}
	}
	p.depth--
	return mappingJSON(kept, lists, bad)
}

// mapValue reads the value of the map entry e into it; bad reports a value
// of another type than the map's (or in a list of strings).
func (p *parser) mapValue(e entry, lists bool) (entry, bool) {
	p.ws()
	c, ok := p.peek()
	if !ok {
		p.fail("unexpected end of JSON input")
	}
	switch {
	case c == 'n':
		p.skip()
		e.null = true
	case !lists && c == '"':
		p.pos++
		var vcut bool
		e.str, vcut = p.str(MaxEntry)
		e.cut = e.cut || vcut
	case lists && c == '[':
		p.pos++
		var lbad, lcut bool
		e.list, lbad, lcut = p.list(false)
		e.cut = e.cut || lcut
		return e, lbad
	default:
		p.skip()
		return e, true
	}
	return e, false
}

// mappingJSON writes the kept entries of a map as a JSON object, with an
// entry of the wrong type when bad, and reports whether any was cut.
func mappingJSON(kept []entry, lists, bad bool) ([]byte, bool) {
	out := []byte{'{'}
	cut := false
	for i, e := range kept {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(append(out, quote(e.key)...), ':')
		switch {
		case e.null:
			out = append(out, "null"...)
		case lists:
			out = append(out, listJSON(e.list, false)...)
		default:
			out = append(out, quote(e.str)...)
		}
		cut = cut || e.cut
	}
	if bad {
		if len(kept) > 0 {
			out = append(out, ',')
		}
		out = append(out, `"":0`...)
	}
	return append(out, '}'), cut
}

// keepSmallest adds e to kept, sorted by key: a key already there takes the
// new value; at most MaxEntries+1 keys stay, the smallest.
func keepSmallest(kept []entry, e entry) []entry {
	i, found := slices.BinarySearchFunc(kept, e.key, func(a entry, k string) int { return strings.Compare(a.key, k) })
	if found {
		kept[i] = e
		return kept
	}
	if i > MaxEntries {
		return kept
	}
	kept = slices.Insert(kept, i, e)
	if len(kept) > MaxEntries+1 {
		kept = kept[:MaxEntries+1]
	}
	return kept
}
