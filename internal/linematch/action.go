package linematch

import (
	"bytes"
	"encoding/binary"
	"math/bits"

	"github.com/gofiber/utils/v2/simd"
)

// This file finds, block-wide, the lines that may be a sensitive action
// (lineage.Action), so that followed user names are looked for only there:
// a followed name matches nothing else. Like the other searches it never
// misses a line; audit.Decode with Classify decides.
//
// A sensitive action has impersonatedUser set, or an objectRef whose
// resource is one of those lineage.Action names. Both keys are found by a
// byte rare in audit lines ('U' of "impersonatedUser", 'j' of "objectRef",
// searched for in one pass with the 'J' of "JTI=": blockScan.marksKeys);
// an escape of a byte of either key is found by the escape pass (escAct).
// audit.Decode matches keys exactly (its fast path only when that cannot
// differ), so one of these spellings holds the key that decides.

// actionBytes can write the keys "objectRef" and "impersonatedUser".
var actionBytes = setOf("objectRef", "impersonatedUser")

// impersonatedAt reports whether the 'U' at k ends a string
// "impersonatedUser".
func impersonatedAt(block []byte, k int) bool {
	return k >= 13 && block[k-1] == 'd' && k+5 <= len(block) && string(block[k-13:k+5]) == `"impersonatedUser"`
}

// objectRefActAt reports whether the 'j' at k is that of a string
// "objectRef" whose value may name a sensitive action (mayActRef).
func objectRefActAt(block []byte, k int) bool {
	return k >= 3 && k+8 <= len(block) && string(block[k-3:k+8]) == `"objectRef"` && mayActRef(block, k+8)
}

// maxRef bounds the bytes mayActRef reads of an objectRef value; a longer
// one may be anything.
const maxRef = 1024

// mayActRef reports whether the value after the string "objectRef" ending
// at i may be the objectRef of a sensitive action: false only when it is
// no key, null, or a flat object without escapes whose one "resource" key
// names no sensitive resource (or pods or nodes without a subresource).
func mayActRef(b []byte, i int) bool {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return false // a string, not a key
	}
	i = skipSpace(b, i+1)
	if i >= len(b) || b[i] == 'n' {
		return false // null, or torn: no objectRef
	}
	if b[i] != '{' {
		return true
	}
	w := b[i+1 : min(len(b), i+1+maxRef)]
	// The first '}' ends the object when no object opens before it and it
	// is not inside a string: without escapes, quotes pair up. (A newline
	// before it leaves the object open at the line's end: that line does
	// not decode. An array may hold a string "resource": keys says may.)
	end := simd.Memchr3(w, '}', '{', '\\')
	if end < 0 || w[end] != '}' {
		return true
	}
	obj := w[:end]
	if quotes(obj)%2 != 0 {
		return true
	}
	var r refScan
	if !r.keys(obj) {
		return true
	}
	return r.mayAct()
}

// quotes returns the number of '"' in b. An objectRef is short: eight
// bytes at a time in a register cost less than bytes.Count's vector setup.
func quotes(b []byte) int {
	const (
		ones = 0x0101010101010101
		low7 = 0x7f7f7f7f7f7f7f7f
	)
	n := 0
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b) ^ ('"' * ones) // a quote is a zero byte
		// The high bit of each byte of z is set iff that byte of x is zero:
		// exact, as the low seven bits are added without a carry out.
		z := ^((x&low7 + low7) | x | low7)
		n += bits.OnesCount64(z)
		b = b[8:]
	}
	for _, c := range b {
		if c == '"' {
			n++
		}
	}
	return n
}

// refScan reads the inside of an objectRef object.
type refScan struct {
	res            []byte // the value of its "resource" key
	hasRes, hasSub bool   // it has a "resource", a "subresource" key
}

// keys finds the strings "resource" and "subresource" of obj, the inside
// of a flat object without escapes, by their 'u' (rare in an objectRef),
// and reads the value of "resource"; false when obj may be anything: a
// second "resource", or one that is not a key with a string value.
func (r *refScan) keys(obj []byte) bool {
	at, i := -1, 0
	if len(obj) >= 10 && string(obj[:10]) == `"resource"` {
		at, i = 10, 10 // the usual first key, without a search
	}
	for {
		k := bytes.IndexByte(obj[i:], 'u')
		if k < 0 {
			break
		}
		k += i
		i = k + 1
		// 'u' is the fifth byte of "resource".
		if k < 5 || k+5 > len(obj) || string(obj[k-4:k+5]) != `resource"` {
			continue
		}
		switch {
		case obj[k-5] == '"':
			if at >= 0 {
				return false
			}
			at = k + 5
		case k >= 8 && string(obj[k-8:k-4]) == `"sub`:
			r.hasSub = true
		}
	}
	if at < 0 {
		return true
	}
	r.hasRes = true
	return r.value(obj, at)
}

// value reads the value of the key "resource" that ends at i.
func (r *refScan) value(obj []byte, i int) bool {
	i = skipSpace(obj, i)
	if i >= len(obj) || obj[i] != ':' {
		return false
	}
	i = skipSpace(obj, i+1)
	if i >= len(obj) || obj[i] != '"' {
		return false
	}
	// A resource name is short: a loop costs less than a search's call.
	e := i + 1
	for e < len(obj) && obj[e] != '"' {
		e++
	}
	if e == len(obj) {
		return false
	}
	r.res = obj[i+1 : e]
	return true
}

// mayAct reports whether an objectRef with the keys read may be that of a
// sensitive action (lineage.Action), whatever the verb and API group.
func (r *refScan) mayAct() bool {
	if !r.hasRes {
		return false // no resource: no sensitive action
	}
	switch string(r.res) {
	case "secrets", "roles", "rolebindings", "clusterroles", "clusterrolebindings", "certificatesigningrequests":
		return true
	case "pods", "nodes":
		// Only with a subresource (exec, attach, portforward,
		// ephemeralcontainers; proxy).
		return r.hasSub
	}
	// Anything else is no sensitive action; a create of
	// serviceaccounts/token is a token create, never a lineage match.
	return false
}
