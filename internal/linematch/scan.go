package linematch

import (
	"bytes"
	"encoding/json"
)

// This file holds the byte-level pieces of the scan. None of them decides:
// each finds what may matter, never missing it, and audit.Decode with
// Classify (or a re-check of an Unsure lookback entry) decides.

// byteSet is a set of bytes.
type byteSet [256]bool

func setOf(words ...string) byteSet {
	var s byteSet
	for _, w := range words {
		for i := 0; i < len(w); i++ {
			s[w[i]] = true
		}
	}
	return s
}

func union(a, b byteSet) byteSet {
	for i, ok := range b {
		a[i] = a[i] || ok
	}
	return a
}

var (
	// jtiBytes can write a credential JTI: "JTI=" and a uuid.
	jtiBytes = setOf("JTI=", "0123456789abcdefABCDEF-")
	// userBytes can write the keys "user" and "username".
	userBytes = setOf("username")
	// legacyBytes can write "legacy-token".
	legacyBytes = setOf("legacy-token")
	// keyBytes are the bytes whose escape makes a line's Keys unsure.
	keyBytes = union(jtiBytes, userBytes)
)

// indexEscape returns the index of the first \u00XX escape in b that writes
// a byte of set, or -1. It may report an escaped backslash followed by
// "u00XX": a false candidate, never a missed one. JSON can write a byte
// below 0x80 only as itself or as such an escape (\" \\ \/ \b \f \n \r \t
// write bytes no search here looks for).
func indexEscape(b []byte, set *byteSet) int {
	i := 0
	for {
		k := bytes.IndexByte(b[i:], '\\')
		if k < 0 {
			return -1
		}
		k += i
		if k+5 < len(b) && b[k+1] == 'u' && b[k+2] == '0' && b[k+3] == '0' {
			hi, ok1 := unhex(b[k+4])
			lo, ok2 := unhex(b[k+5])
			if ok1 && ok2 && set[hi<<4|lo] {
				return k
			}
		}
		i = k + 1
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

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
// quote is at i, and whether it is plain (no backslash, ASCII only, so its
// raw bytes are its value); ok is false when it does not end in b.
func stringEnd(b []byte, i int) (end int, plain, ok bool) {
	plain = true
	for j := i + 1; ; {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			return 0, false, false
		}
		k += j
		if plain && (bytes.IndexByte(b[i+1:k], '\\') >= 0 || !ascii(b[i+1:k])) {
			plain = false
		}
		if !escaped(b, k) {
			return k + 1, plain, true
		}
		j = k + 1
	}
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

func ascii(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// maxSkipDepth bounds the nesting skipValue follows.
const maxSkipDepth = 64

// skipValue returns the index just after the JSON value starting at i (no
// leading space), ok false when it is not one it can skip. It checks
// brackets and strings, not the grammar: Decode is the judge.
func skipValue(b []byte, i int) (int, bool) {
	start, depth := i, 0
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			end, _, ok := stringEnd(b, i)
			if !ok {
				return 0, false
			}
			i = end
		case c == '{' || c == '[':
			depth++
			if depth > maxSkipDepth {
				return 0, false
			}
			i++
			continue
		case c == '}' || c == ']':
			if depth == 0 { // ends a scalar: the bracket is the parent's
				return i, i > start
			}
			depth--
			i++
		case depth == 0 && (c == ',' || isSpace(c)):
			return i, i > start
		default:
			i++
			continue
		}
		if depth == 0 {
			return i, true
		}
	}
	return i, depth == 0 && i > start
}

// userKeyAt reports whether the '{' at i may open the value of a key
// "user": `"user"`, space, ':', space before it.
func userKeyAt(b []byte, i int) bool {
	j := spaceBack(b, i-1)
	if j < 0 || b[j] != ':' {
		return false
	}
	j = spaceBack(b, j-1)
	return j >= 5 && b[j] == '"' && b[j-1] == 'r' && b[j-2] == 'e' && b[j-3] == 's' && b[j-4] == 'u' && b[j-5] == '"'
}

// userName finds the value of the last "username" key of the object that
// opens at i: its raw string (quotes included) and whether it is plain.
// has is false when the object has no string username (the decoded name
// is then empty); ok is false when the object is not one it can read.
func userName(b []byte, i int) (raw []byte, plain, has, ok bool) {
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil, false, false, true
	}
	for i < len(b) {
		if b[i] != '"' {
			return nil, false, false, false
		}
		kend, kplain, ok := stringEnd(b, i)
		if !ok || !kplain {
			return nil, false, false, false
		}
		key := b[i+1 : kend-1]
		i = skipSpace(b, kend)
		if i >= len(b) || b[i] != ':' {
			return nil, false, false, false
		}
		i = skipSpace(b, i+1)
		vend, ok := skipValue(b, i)
		if !ok || vend <= i {
			return nil, false, false, false
		}
		if string(key) == "username" {
			has = b[i] == '"'
			raw, plain = b[i:vend], false
			if has {
				_, plain, _ = stringEnd(b, i)
			}
		}
		i = skipSpace(b, vend)
		if i < len(b) && b[i] == '}' {
			return raw, plain, has, true
		}
		if i >= len(b) || b[i] != ',' {
			return nil, false, false, false
		}
		i = skipSpace(b, i+1)
	}
	return nil, false, false, false
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
	if v+36 < len(b) && b[v+36] == '"' {
		if id, ok := parseUUID(b[v : v+36]); ok {
			return id, jtiUUID, nil
		}
	}
	end, plain, ok := stringEnd(b, j-1)
	if !ok || !plain {
		return id, jtiOdd, nil
	}
	return id, jtiOdd, b[v : end-1]
}

// isJTIAt reports whether "JTI=" starts at j.
func isJTIAt(b []byte, j int) bool {
	return j+4 <= len(b) && b[j] == 'J' && b[j+1] == 'T' && b[j+2] == 'I' && b[j+3] == '='
}

// legacyAt reports whether "legacy-token" holds the 'y' at k.
func legacyAt(b []byte, k int) bool {
	return k >= 5 && k+7 <= len(b) && string(b[k-5:k+7]) == "legacy-token"
}
