package linematch

import (
	"bytes"
	"hash/maphash"
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

// hashSeed keys UserHash for the life of the process: keys are never stored
// across processes.
var hashSeed = maphash.MakeSeed()

// UserHash is the hash of a user name that Keys hold. It is never 0.
func UserHash(name string) uint64 {
	return nonZero(maphash.String(hashSeed, name))
}

func userHashBytes(name []byte) uint64 {
	return nonZero(maphash.Bytes(hashSeed, name))
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

// KeysOf returns the keys of one line, from its bytes alone: the
// credential JTI is the uuid of every "JTI=" that starts a list entry
// (lineage.CredentialJTI reads the first such entry of user.extra's
// credential-id); the user names are those of every object under a key
// "user" (user.username is the last "username" of the last top-level one).
// Any \u escape of a byte of those names, a second distinct uuid, a third
// distinct name, a credential id that is not a uuid or an object it cannot
// read makes the keys Unsure. A line that does not decode may get any keys:
// it never matches.
func KeysOf(line []byte) Keys {
	if indexEscape(line, &keyBytes) >= 0 {
		return Keys{Unsure: true}
	}
	var k Keys
	if !k.addJTIs(line) || !k.addUsers(line) {
		return Keys{Unsure: true}
	}
	return k
}

// addJTIs sets the credential JTI of line; false when unsure.
func (k *Keys) addJTIs(line []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(line[i:], 'J')
		if j < 0 {
			return true
		}
		j += i
		i = j + 1
		if !isJTIAt(line, j) {
			continue
		}
		id, kind, _ := credentialAt(line, j)
		switch {
		case kind == jtiOdd, kind == jtiUUID && k.HasJTI && id != k.JTI:
			return false
		case kind == jtiUUID:
			k.JTI, k.HasJTI = id, true
		}
	}
}

// addUsers sets the user name hashes of line; false when unsure.
func (k *Keys) addUsers(line []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(line[i:], '{')
		if j < 0 {
			return true
		}
		j += i
		i = j + 1
		if !userKeyAt(line, j) {
			continue
		}
		raw, plain, has, ok := userName(line, j)
		if !ok {
			return false
		}
		if !has || len(raw) == 2 {
			continue // no name, or an empty one: never followed
		}
		h, ok := hashName(raw, plain)
		if !ok {
			return false
		}
		switch {
		case h == k.User || h == k.User2:
		case k.User == 0:
			k.User = h
		case k.User2 == 0:
			k.User2 = h
		default:
			return false
		}
	}
}

// hashName returns UserHash of the JSON string raw (quotes included).
func hashName(raw []byte, plain bool) (uint64, bool) {
	if plain {
		return userHashBytes(raw[1 : len(raw)-1]), true
	}
	s, ok := unquote(raw)
	if !ok {
		return 0, false
	}
	return UserHash(s), true
}
