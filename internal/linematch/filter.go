package linematch

import (
	"encoding/binary"
	"encoding/hex"
)

// idFilter tells which uuids a Set cannot watch, so that most credential
// ids of a block cost a bit test rather than a parse and two map lookups: a
// bitset over a hash of the uuid's first eight hex digits, about eight bits
// per key (a false positive rate of at most about 1 in 8; the maps decide).
// It is read from the text, in either case (textKey), so that an unwatched
// uuid is not even parsed. It has no false negatives: every uuid key of the
// Set has its bit set. A removed key's bit stays set until the filter is
// rebuilt, when the stale keys outnumber the live ones.
type idFilter struct {
	bits  []uint64
	shift uint // 64 - log2(number of bits)
	keys  int  // keys whose bit was set since the last build, stale ones included
}

// textKey returns the filter key of a uuid written as text, from its first
// eight bytes (hex digits): a hex digit with bit 0x20 set is its lower-case
// form, so both cases of a digit give the key of idKey.
func textKey(b []byte) uint64 { return binary.LittleEndian.Uint64(b) | 0x2020202020202020 }

// idKey returns the filter key of id: that of its text in lower case.
func idKey(id *[16]byte) uint64 {
	var t [8]byte
	hex.Encode(t[:], id[:4])
	return binary.LittleEndian.Uint64(t[:])
}

// minFilterBits is the size of the smallest filter.
const minFilterBits = 512

// slot returns the bit of key.
func (f *idFilter) slot(key uint64) uint64 { return (key * 0x9e3779b97f4a7c15) >> f.shift }

// mayHoldText reports whether the text at b[v:] may be a uuid key: false
// means that, if it is a uuid (36 bytes, then the closing quote), it is
// none of the keys.
func (f *idFilter) mayHoldText(b []byte, v int) bool {
	if v+36 >= len(b) || b[v+36] != '"' {
		return true // no uuid: the caller decides
	}
	if len(f.bits) == 0 {
		return false
	}
	i := f.slot(textKey(b[v : v+8]))
	return f.bits[i>>6]&(1<<(i&63)) != 0
}

// mayHold reports whether id may be a key: false means it is none.
func (f *idFilter) mayHold(id *[16]byte) bool {
	if len(f.bits) == 0 {
		return false
	}
	i := f.slot(idKey(id))
	return f.bits[i>>6]&(1<<(i&63)) != 0
}

// set sets the bit of id.
func (f *idFilter) set(id *[16]byte) {
	i := f.slot(idKey(id))
	f.bits[i>>6] |= 1 << (i & 63)
	f.keys++
}

// full reports whether one more key would make the filter denser than
// eight bits a key.
func (f *idFilter) full() bool { return (f.keys+1)*8 > len(f.bits)*64 }

// build sizes the filter for the uuid keys of maps and sets their bits.
func (f *idFilter) build(maps ...map[[16]byte]bounds) {
	n := 0
	for _, m := range maps {
		n += len(m)
	}
	if n == 0 {
		*f = idFilter{}
		return
	}
	bits, log := minFilterBits, uint(9)
	for bits < 8*n {
		bits, log = bits*2, log+1
	}
	if len(f.bits) == bits/64 {
		clear(f.bits)
	} else {
		f.bits = make([]uint64, bits/64)
	}
	f.shift, f.keys = 64-log, 0
	for _, m := range maps {
		for id := range m {
			f.set(&id)
		}
	}
}
