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

// AppendKeys appends to dst the keys of each line of block, in order, as
// KeysOf gives them. block holds whole lines separated by '\n' (a last line
// without one is a line too); empty lines are skipped.
func AppendKeys(dst []LineKeys, block []byte) []LineKeys {
	var sc blockScan
	sc.keyPasses(block)
	var cur cursor
	for off := 0; off < len(block); {
		end := lineEnd(block, off)
		if end > off {
			k, _, _ := sc.line(block, off, end, &cur)
			dst = append(dst, LineKeys{Start: off, End: end, Keys: k})
		}
		off = end + 1
	}
	return dst
}

// KeysOf returns the keys of one line, from its bytes alone: the
// credential JTI is the uuid of every "JTI=" that starts a list entry
// (lineage.CredentialJTI reads the first such entry of user.extra's
// credential-id); the user names are the string values of every key
// "username", at any depth (user.username is one of them). Any \u escape of
// a byte of those names, a second distinct uuid, a third distinct name or a
// credential id that is not a uuid makes the keys Unsure. A line that does
// not decode may get any keys: it never matches.
func KeysOf(line []byte) Keys {
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i] // one line only
	}
	var sc blockScan
	sc.keyPasses(line)
	var cur cursor
	k, _, _ := sc.line(line, 0, len(line), &cur)
	return k
}

// keyPasses runs the passes the keys need over block.
func (sc *blockScan) keyPasses(block []byte) {
	sc.escapes(block)
	sc.jtis = marksJTI(sc.jtis, block)
	sc.users = marksUsername(sc.users, block)
}

// cursor is where the per-line reading of a blockScan's lists stands.
type cursor struct{ esc, jti, user, legacy int }

// line reads the marks of block[start:end], one line, and returns its keys,
// the escape classes found in it and whether it holds "legacy-token". The
// cursor moves past the line's marks.
func (sc *blockScan) line(block []byte, start, end int, cur *cursor) (Keys, uint8, bool) {
	var esc uint8
	for ; cur.esc < len(sc.escs) && sc.escs[cur.esc].pos < end; cur.esc++ {
		esc |= sc.escs[cur.esc].class
	}
	legacy := false
	for ; cur.legacy < len(sc.legacys) && sc.legacys[cur.legacy] < end; cur.legacy++ {
		legacy = true
	}
	line := block[start:end]
	var k Keys
	ok := esc&escKeys == 0
	for ; cur.jti < len(sc.jtis) && sc.jtis[cur.jti] < end; cur.jti++ {
		ok = ok && k.addJTI(line, sc.jtis[cur.jti]-start)
	}
	for ; cur.user < len(sc.users) && sc.users[cur.user] < end; cur.user++ {
		ok = ok && k.addUser(line, sc.users[cur.user]-start)
	}
	if !ok {
		k = Keys{Unsure: true}
	}
	return k, esc, legacy
}

// addJTI reads the "JTI=" at j; false when the keys become unsure.
func (k *Keys) addJTI(line []byte, j int) bool {
	id, kind, _ := credentialAt(line, j)
	switch {
	case kind == jtiOdd, kind == jtiUUID && k.HasJTI && id != k.JTI:
		return false
	case kind == jtiUUID:
		k.JTI, k.HasJTI = id, true
	}
	return true
}

// addUser reads the "username" whose 'm' is at i; false when the keys
// become unsure.
func (k *Keys) addUser(line []byte, i int) bool {
	raw, plain, has := nameValue(line, i)
	if !has || len(raw) == 2 {
		return true // no name, or an empty one: never followed
	}
	h, ok := hashName(raw, plain)
	switch {
	case !ok:
		return false
	case h == k.User || h == k.User2:
	case k.User == 0:
		k.User = h
	case k.User2 == 0:
		k.User2 = h
	default:
		return false
	}
	return true
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
