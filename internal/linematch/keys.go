package linematch

import (
	"bytes"
	"hash/maphash"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
)

// Keys are the cheap per-line keys a Lookback keeps: what a watch that
// arrives later needs to know whether the line may match it.
//
// The promise: when Unsure is false, the line's credential JTI (if any) is
// the uuid JTI (HasJTI true) and user.username, if not empty, hashes
// (UserHash) to User or User2. Otherwise the line must be decoded again
// to be judged against a new watch.
type Keys struct {
	// JTI is the credential JTI of the line, when HasJTI.
	JTI    [16]byte
	HasJTI bool
	// Unsure: the cheap extraction cannot be trusted (escapes, odd
	// structure, a credential JTI that is not a uuid).
	Unsure bool
	// User and User2 are the hashes of the values of the line's
	// "username" keys (0: none); user.username is one of them.
	User, User2 uint64
}

// seed keys UserHash for the life of the process: keys are never stored
// across processes.
var seed = maphash.MakeSeed()

// UserHash is the hash of a user name that Keys hold. It is never 0.
func UserHash(name string) uint64 {
	return nonZero(maphash.String(seed, name))
}

func userHashBytes(name []byte) uint64 {
	return nonZero(maphash.Bytes(seed, name))
}

func nonZero(h uint64) uint64 {
	if h == 0 {
		return 1
	}
	return h
}

// LineKeys are the keys of one line of a block: block[Start:End], without
// its newline.
type LineKeys struct {
	Start, End int
	Keys       Keys
}

// AppendKeys appends to dst the keys of each line of block, in order. block
// holds whole lines separated by '\n' (a last line without one is a line
// too); empty lines are skipped.
func AppendKeys(dst []LineKeys, block []byte) []LineKeys {
	for off := 0; off < len(block); {
		end := bytes.IndexByte(block[off:], '\n')
		if end < 0 {
			end = len(block)
		} else {
			end += off
		}
		if end > off {
			dst = append(dst, LineKeys{Start: off, End: end, Keys: KeysOf(block[off:end])})
		}
		off = end + 1
	}
	return dst
}

// KeysOf returns the keys of one line.
func KeysOf(line []byte) Keys {
	ev, err := audit.Decode(line)
	if err != nil {
		return Keys{} // never matches anything
	}
	var k Keys
	if jti := lineage.CredentialJTI(ev.User); jti != "" {
		id, ok := parseUUID(jti)
		k.JTI, k.HasJTI, k.Unsure = id, ok, !ok
	}
	if name := ev.Username(); name != "" {
		k.User = UserHash(name)
	}
	return k
}
