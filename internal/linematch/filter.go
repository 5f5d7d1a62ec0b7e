package linematch

import "encoding/binary"

// idFilter tells which uuids a Set cannot watch, so that most credential
// ids of a block cost a bit test rather than two map lookups: a bitset over
// a hash of the uuid, about eight bits per key (a false positive rate of
// about 1 in 8; the maps decide). It has no false negatives: every uuid key
// of the Set has its bit set. A removed key's bit stays set until the
// filter is rebuilt, when the stale keys outnumber the live ones.
type idFilter struct {
	bits  []uint64
	shift uint // 64 - log2(number of bits)
	keys  int  // keys whose bit was set since the last build, stale ones included
}

// minFilterBits is the size of the smallest filter.
const minFilterBits = 512

// slot returns the bit of id.
func (f *idFilter) slot(id *[16]byte) uint64 {
	h := binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:])
	return (h * 0x9e3779b97f4a7c15) >> f.shift
}

// mayHold reports whether id may be a key: false means it is none.
func (f *idFilter) mayHold(id *[16]byte) bool {
	if len(f.bits) == 0 {
		return false
	}
	i := f.slot(id)
	return f.bits[i>>6]&(1<<(i&63)) != 0
}

// set sets the bit of id.
func (f *idFilter) set(id *[16]byte) {
	i := f.slot(id)
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
