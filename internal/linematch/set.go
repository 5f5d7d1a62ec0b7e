package linematch

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Kind is a set of lineage match kinds, one bit each.
type Kind uint8

// The kinds of match. Token, ActorUser and ActorCredential are watched
// (Set); Legacy is always matched.
const (
	// Token: a request authenticated with a watched token, by its JTI.
	Token Kind = 1 << iota
	// ActorUser: a sensitive action by a followed minter, by user.username.
	ActorUser
	// ActorCredential: a sensitive action by a followed service-account
	// minter, by the JTI of the credential it used.
	ActorCredential
	// Legacy: a request made with a legacy Secret-based token (annotation
	// authentication.k8s.io/legacy-token).
	Legacy
)

// String names the kinds of k, joined by "|"; "none" for none.
func (k Kind) String() string {
	if k == 0 {
		return "none"
	}
	var parts []string
	for _, n := range []struct {
		k    Kind
		name string
	}{{Token, "token"}, {ActorUser, "actor_user"}, {ActorCredential, "actor_credential"}, {Legacy, "legacy"}} {
		if k&n.k != 0 {
			parts = append(parts, n.name)
			k &^= n.k
		}
	}
	if k != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint8(k)))
	}
	return strings.Join(parts, "|")
}

// MaxKeyLen bounds a watch key in bytes: audit.MaxIdentity, the bound of a
// user name on the wire. A longer key cannot match an event that travelled.
const MaxKeyLen = audit.MaxIdentity

// Watch is one watched token or minter.
type Watch struct {
	// Kind is Token, ActorUser or ActorCredential.
	Kind Kind
	// Key is the JTI without "JTI=" (Token, ActorCredential) or the
	// user.username (ActorUser).
	Key string
	// From and Until bound the requestReceivedTimestamp of the requests
	// that count, both included. A zero time leaves that side unbounded.
	From, Until time.Time
}

// bounds are a watch's [from, until] in Unix nanoseconds.
type bounds struct{ from, until int64 }

func boundsOf(w Watch) bounds {
	from, until := w.Nanos()
	return bounds{from: from, until: until}
}

// Nanos returns w's From and Until in Unix nanoseconds; a zero time is
// math.MinInt64 or math.MaxInt64 (unbounded).
func (w Watch) Nanos() (from, until int64) {
	from, until = math.MinInt64, math.MaxInt64
	if !w.From.IsZero() {
		from = w.From.UnixNano()
	}
	if !w.Until.IsZero() {
		until = w.Until.UnixNano()
	}
	return from, until
}

// hull returns the smallest bounds holding b and o.
func (b bounds) hull(o bounds) bounds {
	return bounds{from: min(b.from, o.from), until: max(b.until, o.until)}
}

// contains reports whether t lies in b; an unknown time (ok false) does:
// the aggregator decides.
func (b bounds) contains(t int64, ok bool) bool {
	return !ok || (b.from <= t && t <= b.until)
}

// jtis holds watched JTIs: uuids as 16 bytes, any other key as a string.
type jtis struct {
	ids  map[[16]byte]bounds
	strs map[string]bounds
}

func (j *jtis) len() int { return len(j.ids) + len(j.strs) }

// add watches key within b; isNew tells that key is a uuid, id, that j did
// not hold.
func (j *jtis) add(key string, b bounds) (id [16]byte, isNew bool) {
	if id, ok := parseUUID(key); ok {
		if j.ids == nil {
			j.ids = make(map[[16]byte]bounds)
		}
		old, ok := j.ids[id]
		if ok {
			b = b.hull(old)
		}
		j.ids[id] = b
		return id, !ok
	}
	if j.strs == nil {
		j.strs = make(map[string]bounds)
	}
	if old, ok := j.strs[key]; ok {
		b = b.hull(old)
	}
	j.strs[strings.Clone(key)] = b
	return id, false
}

func (j *jtis) remove(key string) {
	if id, ok := parseUUID(key); ok {
		delete(j.ids, id)
		return
	}
	delete(j.strs, key)
}

func (j *jtis) lookup(key string) (bounds, bool) {
	if id, ok := parseUUID(key); ok {
		b, ok := j.ids[id]
		return b, ok
	}
	b, ok := j.strs[key]
	return b, ok
}

func (j *jtis) expire(now int64) int {
	n := expireMap(j.ids, now)
	return n + expireMap(j.strs, now)
}

func expireMap[K comparable](m map[K]bounds, now int64) int {
	n := 0
	for k, b := range m {
		if b.until < now {
			delete(m, k)
			n++
		}
	}
	return n
}

// Set is the watch set of an agent. Its zero value is empty and ready to
// use; it is not safe for concurrent use.
//
// Memory per watch: a JTI that parses as a uuid is kept as 16 bytes with its
// bounds (16 bytes), about 40 bytes with the map's overhead; any other key
// (a JTI that is not a uuid, a user name) as a string of at most MaxKeyLen
// bytes plus about 40 bytes.
type Set struct {
	token, cred jtis
	users       map[string]bounds
	ids         idFilter // over the uuid keys of token and cred
}

// Add starts a watch, or extends one of the same kind and key to the
// smallest bounds holding both.
func (s *Set) Add(w Watch) error {
	if w.Key == "" {
		return errors.New("add watch: empty key")
	}
	if len(w.Key) > MaxKeyLen {
		return fmt.Errorf("add watch: key of %d bytes exceeds %d", len(w.Key), MaxKeyLen)
	}
	b := boundsOf(w)
	var id [16]byte
	var isNew bool
	switch w.Kind {
	case Token:
		id, isNew = s.token.add(w.Key, b)
	case ActorCredential:
		id, isNew = s.cred.add(w.Key, b)
	case ActorUser:
		s.addUser(w.Key, b)
	default:
		return fmt.Errorf("add watch: kind %v is not watchable", w.Kind)
	}
	if isNew {
		if s.ids.full() {
			s.ids.build(s.token.ids, s.cred.ids)
		} else {
			s.ids.set(&id)
		}
	}
	return nil
}

// pruneFilter rebuilds the uuid filter once removed keys outnumber the
// live ones.
func (s *Set) pruneFilter() {
	if s.ids.keys > 2*(len(s.token.ids)+len(s.cred.ids)) {
		s.ids.build(s.token.ids, s.cred.ids)
	}
}

// Remove stops the watch of kind k (one of Token, ActorUser,
// ActorCredential) and key, if any.
func (s *Set) Remove(k Kind, key string) {
	switch k {
	case Token:
		s.token.remove(key)
	case ActorCredential:
		s.cred.remove(key)
	case ActorUser:
		delete(s.users, key)
	}
	s.pruneFilter()
}

func (s *Set) addUser(name string, b bounds) {
	if old, ok := s.users[name]; ok {
		s.users[name] = b.hull(old)
		return
	}
	if s.users == nil {
		s.users = make(map[string]bounds)
	}
	s.users[strings.Clone(name)] = b
}

// Reset drops every watch.
func (s *Set) Reset() { *s = Set{} }

// Expire drops the watches whose Until is before now and returns how many.
func (s *Set) Expire(now time.Time) int {
	t := now.UnixNano()
	n := s.token.expire(t) + s.cred.expire(t)
	s.pruneFilter()
	return n + expireMap(s.users, t)
}

// Len returns the number of watches of the kinds in k.
func (s *Set) Len(k Kind) int {
	n := 0
	if k&Token != 0 {
		n += s.token.len()
	}
	if k&ActorCredential != 0 {
		n += s.cred.len()
	}
	if k&ActorUser != 0 {
		n += len(s.users)
	}
	return n
}

// parseUUID parses the canonical 36-character form of a uuid, hex digits
// of either case.
func parseUUID[T string | []byte](s T) ([16]byte, bool) {
	var id [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return id, false
	}
	bad := byte(0)
	for j, i := range uuidDigits {
		hi, lo := hexVal[s[i]], hexVal[s[i+1]]
		bad |= hi | lo
		id[j] = hi<<4 | lo
	}
	return id, bad&0xf0 == 0
}

// uuidDigits are the offsets of the 16 digit pairs of a uuid's text.
var uuidDigits = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// hexVal maps a hex digit to its value, any other byte to 0xff.
var hexVal = func() (t [256]byte) {
	for i := range t {
		if v, ok := unhex(byte(i)); ok {
			t[i] = v
		} else {
			t[i] = 0xff
		}
	}
	return t
}()

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

// needsJTI reports whether s watches credential JTIs (Token or
// ActorCredential).
func (s *Set) needsJTI() bool { return s != nil && (s.token.len() > 0 || s.cred.len() > 0) }

// needsUsers reports whether s follows user names.
func (s *Set) needsUsers() bool { return s != nil && len(s.users) > 0 }

// jtiAt returns the kinds (Token, ActorCredential) under which s may watch
// the "JTI=" at j of b. An unwatched uuid costs a filter test, unless s
// watches odd (non-uuid) keys, which only the full read rules out.
func (s *Set) jtiAt(b []byte, j int) Kind {
	if len(s.token.strs) == 0 && len(s.cred.strs) == 0 && !s.ids.mayHoldText(b, j+4) {
		return 0
	}
	return s.mayWatchJTI(credentialAt(b, j))
}

// mayWatchJTI returns the kinds (Token, ActorCredential) under which s
// may watch a "JTI=" occurrence read by credentialAt.
func (s *Set) mayWatchJTI(id [16]byte, kind int, val []byte) Kind {
	var k Kind
	switch kind {
	case jtiUUID:
		if _, ok := s.token.ids[id]; ok {
			k |= Token
		}
		if _, ok := s.cred.ids[id]; ok {
			k |= ActorCredential
		}
	case jtiOdd:
		k = s.token.mayHold(val, Token) | s.cred.mayHold(val, ActorCredential)
	}
	return k
}

// mayHold returns k when j may hold the credential id val (nil: not plain,
// decode and see), 0 otherwise.
func (j *jtis) mayHold(val []byte, k Kind) Kind {
	if len(j.strs) == 0 {
		return 0
	}
	if val == nil {
		return k
	}
	if _, ok := j.strs[string(val)]; ok {
		return k
	}
	return 0
}

// followsName reports whether s follows the user name written as the JSON
// string raw (quotes included; plain: its bytes are its value).
func (s *Set) followsName(raw []byte, plain bool) bool {
	if len(raw) <= 2 {
		return false
	}
	if plain {
		_, ok := s.users[string(raw[1:len(raw)-1])]
		return ok
	}
	name, ok := unquote(raw)
	if !ok {
		return true // decode and see
	}
	_, ok = s.users[name]
	return ok
}
