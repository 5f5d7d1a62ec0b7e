package linematch

import (
	"bytes"
	"encoding/json"

	"github.com/gofiber/utils/v2/simd"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
)

// This file holds the byte-level pieces of the scan. None of them decides:
// each finds what may matter, never missing it, and audit.Decode with
// Classify decides.

// byteSet is a set of bytes; setOf builds one (the pre-filter's).
type byteSet = prefilter.Letters

var setOf = prefilter.LetterSet

var (
	// jtiBytes can write a credential JTI: "JTI=" and a uuid.
	jtiBytes = setOf("JTI=", "0123456789abcdefABCDEF-")
	// userBytes can write the key "username".
	userBytes = setOf("username")
	// legacyBytes can write "legacy-token".
	legacyBytes = setOf("legacy-token")
)

// indexEscape returns the index of the first \u00XX escape in b that writes
// a byte of set, or -1: the pre-filter's search, which never misses one.
func indexEscape(b []byte, set *byteSet) int { return prefilter.IndexEscape(b, set) }

// isSpace reports whether c is JSON space within a line: a newline ends
// the line, so the searches never step over one into another line.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }

// skipSpace returns the first index at or after i that is not JSON space.
func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// spaceBack returns the last index at or before i that is not JSON space
// (-1 when none).
func spaceBack(b []byte, i int) int {
	for i >= 0 && isSpace(b[i]) {
		i--
	}
	return i
}

// stringEnd returns the index just after the JSON string whose opening
// quote is at i; ok is false when it does not end in b.
func stringEnd(b []byte, i int) (end int, ok bool) {
	for j := i + 1; ; {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			return 0, false
		}
		k += j
		if b[k-1] != '\\' || !escaped(b, k) {
			return k + 1, true
		}
		j = k + 1
	}
}

// plain reports whether the bytes of a JSON string are its value: no
// backslash, ASCII only.
func plain(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c >= 0x80 {
			return false
		}
	}
	return true
}

// escaped reports whether the quote at k is escaped: preceded by an odd
// number of backslashes.
func escaped(b []byte, k int) bool {
	n := 0
	for j := k - 1; j >= 0 && b[j] == '\\'; j-- {
		n++
	}
	return n%2 == 1
}

// usernameAt reports whether the 'm' at k is that of a string
// "username": `"username"` around it.
func usernameAt(b []byte, k int) bool {
	return k >= 7 && k+2 < len(b) && string(b[k-7:k+3]) == `"username"`
}

// nameValue reads the value of the "username" whose 'm' is at k, within
// line: its raw JSON string (quotes included) and whether its bytes are its
// value. has is false when the string is not followed by ':' and a string
// (then it is not a key, or its value is not a name: the decoded name is
// empty).
func nameValue(line []byte, k int) (raw []byte, isPlain, has bool) {
	i := skipSpace(line, k+3)
	if i >= len(line) || line[i] != ':' {
		return nil, false, false
	}
	i = skipSpace(line, i+1)
	if i >= len(line) || line[i] != '"' {
		return nil, false, false
	}
	end, ok := stringEnd(line, i)
	if !ok {
		return nil, false, false
	}
	raw = line[i:end]
	return raw, plain(raw[1 : len(raw)-1]), true
}

// unquote returns the value of a JSON string (quotes included), as
// encoding/json decodes it; ok false when it is not valid.
func unquote(raw []byte) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// jti kinds of a "JTI=" occurrence.
const (
	jtiNone = iota // not where a credential id can be, or empty
	jtiUUID        // a uuid: id holds it
	jtiOdd         // a credential id that is not a uuid (or not plain)
)

// credentialAt reads the "JTI=" at j: whether it may start an entry of a
// list (a credential id is the first "JTI=" entry of user.extra's
// credential-id list), and then its value. The entry must start a JSON
// string ('"' before it) that is an array element ('[' or ',' before that,
// space allowed): a "JTI=" inside a string, or an object's value (the
// issued-credential-id annotation), is no credential id.
func credentialAt(b []byte, j int) (id [16]byte, kind int, val []byte) {
	if j < 1 || b[j-1] != '"' {
		return id, jtiNone, nil
	}
	p := spaceBack(b, j-2)
	if p < 0 || (b[p] != '[' && b[p] != ',') {
		return id, jtiNone, nil
	}
	v := j + 4
	if v < len(b) && b[v] == '"' {
		return id, jtiNone, nil // "JTI=" alone is skipped by lineage.CredentialJTI
	}
	if v+36 < len(b) && b[v+36] == '"' { // a uuid holds no newline
		if id, ok := parseUUID(b[v : v+36]); ok {
			return id, jtiUUID, nil
		}
	}
	end, ok := stringEnd(b[:lineEnd(b, j)], j-1)
	if !ok || !plain(b[v:end-1]) {
		return id, jtiOdd, nil
	}
	return id, jtiOdd, b[v : end-1]
}

// isJTIAt reports whether "JTI=" starts at j.
func isJTIAt(b []byte, j int) bool {
	return j+4 <= len(b) && b[j] == 'J' && b[j+1] == 'T' && b[j+2] == 'I' && b[j+3] == '='
}

// legacyAt reports whether `legacy-token"` holds the 'y' at k: the end of
// the key of the annotation authentication.k8s.io/legacy-token, unless an
// escape writes a byte of it (then the escape makes the line a candidate).
func legacyAt(b []byte, k int) bool {
	return k >= 5 && k+8 <= len(b) && string(b[k-5:k+8]) == `legacy-token"`
}

// Escape classes: the searches an escaped byte could hide something from.
const (
	escJTI    = 1 << iota // a byte of jtiBytes
	escUser               // a byte of userBytes
	escLegacy             // a byte of legacyBytes
	escAct                // a byte of actionBytes
)

// escClass maps a byte to its escape classes.
var escClass = func() (c [256]uint8) {
	for i := range 256 {
		for _, x := range []struct {
			set *byteSet
			bit uint8
		}{{&jtiBytes, escJTI}, {&userBytes, escUser}, {&legacyBytes, escLegacy}, {&actionBytes, escAct}} {
			if x.set[i] {
				c[i] |= x.bit
			}
		}
	}
	return c
}()

// escMark is an escape found in a block: where, and what it could hide.
type escMark struct {
	pos   int
	class uint8
}

// blockScan holds the positions, in one window of a block, of what the
// searches found, each list in order. Its passes each run over the window
// with a vectorised search for one byte that is rare in audit lines, so
// that a block costs a few passes rather than a few calls per line.
type blockScan struct {
	escs    []escMark // \u00XX escapes of a byte some search looks for
	jtis    []int     // "JTI=" occurrences
	users   []int     // "username" occurrences (the 'm')
	legacys []int     // "legacy-token" occurrences (the 'y')
	acts    []int     // "objectRef" and "impersonatedUser" that may be actions
	lines   []span    // lines that may be sensitive actions
}

// reset empties the lists, keeping their memory.
func (sc *blockScan) reset() {
	sc.escs, sc.jtis, sc.users, sc.legacys = sc.escs[:0], sc.jtis[:0], sc.users[:0], sc.legacys[:0]
	sc.acts, sc.lines = sc.acts[:0], sc.lines[:0]
}

// escapes records the escapes of block whose byte has a class.
func (sc *blockScan) escapes(block []byte) {
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], '\\')
		if k < 0 {
			return
		}
		k += i
		i = k + 1
		if k+5 < len(block) && block[k+1] == 'u' && block[k+2] == '0' && block[k+3] == '0' {
			hi, ok1 := unhex(block[k+4])
			lo, ok2 := unhex(block[k+5])
			if c := escClass[hi<<4|lo]; ok1 && ok2 && c != 0 {
				sc.escs = append(sc.escs, escMark{k, c})
			}
		}
	}
}

// The mark passes append to dst the positions of one byte in block where
// what they look for holds. They are written out, one per byte, so that the
// check inlines: most stops are not a match.

// marksKeys records in one pass over block the positions of "JTI=" (in
// sc.jtis) when jti is set, and when act is set those of the keys of a
// sensitive action (in sc.acts): the 'j' of each "objectRef" whose value
// may name one (objectRefActAt) and the 'U' of each "impersonatedUser".
// One search for the two or three bytes costs about what a search for one
// does: each pass over the window is mostly the reading of it.
func (sc *blockScan) marksKeys(block []byte, jti, act bool) {
	switch {
	case jti && act:
		sc.marksBoth(block)
	case jti:
		for i := 0; ; {
			k := bytes.IndexByte(block[i:], 'J')
			if k < 0 {
				return
			}
			k += i
			i = k + 1
			sc.markJTI(block, k)
		}
	case act:
		for i := 0; ; {
			k := simd.Memchr2(block[i:], 'j', 'U')
			if k < 0 {
				return
			}
			k += i
			i = k + 1
			sc.markAct(block, k)
		}
	}
}

// marksBoth is marksKeys with jti and act set.
func (sc *blockScan) marksBoth(block []byte) {
	for i := 0; ; {
		k := simd.Memchr3(block[i:], 'J', 'j', 'U')
		if k < 0 {
			return
		}
		k += i
		i = k + 1
		if block[k] == 'J' {
			sc.markJTI(block, k)
		} else {
			sc.markAct(block, k)
		}
	}
}

// markJTI records the 'J' at k if it starts "JTI=".
func (sc *blockScan) markJTI(block []byte, k int) {
	if isJTIAt(block, k) {
		sc.jtis = append(sc.jtis, k)
	}
}

// markAct records the 'j' or 'U' at k if it is that of a key of a
// sensitive action.
func (sc *blockScan) markAct(block []byte, k int) {
	if block[k] == 'j' && objectRefActAt(block, k) || block[k] == 'U' && impersonatedAt(block, k) {
		sc.acts = append(sc.acts, k)
	}
}

// marksUsername appends the positions of the 'm' of "username" strings.
// It stops only at an 'm' with a quote two bytes on ("me"): most 'm's of a
// line are not, and every "username" string is.
func marksUsername(dst []int, block []byte) []int {
	for i := 0; ; {
		k := simd.MemchrPair(block[i:], 'm', '"', 2)
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if usernameAt(block, k) {
			dst = append(dst, k)
		}
	}
}

// marksLegacy appends the positions of the 'y' of each `legacy-token"`.
func marksLegacy(dst []int, block []byte) []int {
	for i := 0; ; {
		k := bytes.IndexByte(block[i:], 'y')
		if k < 0 {
			return dst
		}
		k += i
		i = k + 1
		if k >= 5 && block[k-1] == 'c' && legacyAt(block, k) {
			dst = append(dst, k)
		}
	}
}

// lineEnd returns the index of the newline ending the line that holds i,
// or len(block).
func lineEnd(block []byte, i int) int {
	if e := bytes.IndexByte(block[i:], '\n'); e >= 0 {
		return i + e
	}
	return len(block)
}

// sensitiveValues are quoted forms one of which a sensitive action's line
// holds (lineage.Action): the key impersonatedUser, or the resource
// secrets, pods, nodes, roles, clusterroles, rolebindings,
// clusterrolebindings or certificatesigningrequests. (A token create is
// never a lineage match.)
var sensitiveValues = [][]byte{
	[]byte(`"impersonatedUser"`), []byte(`"secrets"`), []byte(`"pods"`), []byte(`"nodes"`),
	[]byte(`roles"`), []byte(`bindings"`), []byte(`"certificatesigningrequests"`),
}

// sensitiveBytes can write the words of sensitiveValues.
var sensitiveBytes = setOf("impersonatedUser", "secrets", "pods", "nodes", "rolebindings", "clusterroles",
	"certificatesigningrequests")

// maySensitive reports whether line may be a sensitive action: it holds
// one of sensitiveValues, or an escape that could hide one.
func maySensitive(line []byte) bool {
	for _, v := range sensitiveValues {
		if bytes.Contains(line, v) {
			return true
		}
	}
	return indexEscape(line, &sensitiveBytes) >= 0
}
