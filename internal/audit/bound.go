package audit

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"unicode/utf8"
)

// Bounds of Bound, in bytes of decoded (UTF-8) text. Together they keep
// any event's wire form under about 1.1 MB, whatever the sizes in the log.
const (
	// MaxIdentity bounds user.username, user.uid and the same of
	// impersonatedUser.
	MaxIdentity = 64 << 10
	// MaxString bounds every other string field.
	MaxString = 16 << 10
	// MaxEntry bounds one entry of a list (groups, sourceIPs, audiences, a
	// user.extra value) and one key or value of a map (annotations,
	// user.extra).
	MaxEntry = 4 << 10
	// MaxEntries bounds the entries kept of one list or map (and of each
	// user.extra value list).
	MaxEntries = 64
	// MaxListBytes bounds the entries kept of one list or map, counting
	// each string as its length plus entryCost: the entries after the
	// first that does not fit are dropped.
	MaxListBytes = 64 << 10
)

// entryCost is what one list or map string costs beyond its bytes.
const entryCost = 8

// Cut returns s cut to at most max bytes (max > 64): a prefix ending at a
// character boundary, then "...[truncated N bytes sha256:H]" with N the
// length of s and H the first 16 hex digits of its SHA-256, so that
// different long values stay different. s itself when it fits.
func Cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return cutSum(s[:max], len(s), sum[:], max)
}

// cutSum builds the cut form of a string of total bytes whose first bytes
// are prefix (at least max of them, or all) and whose SHA-256 is sum.
func cutSum(prefix string, total int, sum []byte, max int) string {
	suffix := fmt.Sprintf("...[truncated %d bytes sha256:%x]", total, sum[:8])
	n := max - len(suffix)
	for k := 0; k < utf8.UTFMax && n > 0 && !utf8.RuneStart(prefix[n]); k++ {
		n--
	}
	return prefix[:n] + suffix
}

// Bound cuts e's fields to the bounds above and records the fields it cut,
// or whose entries it dropped, in e.Truncated (dotted JSON paths, sorted).
// Lists keep their first entries, sourceIPs its last (the connection's own
// address comes last); maps keep their entries in key order. Fields that
// fit are left as they are, so Bound(Bound(e)) changes nothing more.
func Bound(e *Event) {
	var b bounder
	b.str(&e.Level, "level", MaxString)
	b.str(&e.AuditID, "auditID", MaxString)
	b.str(&e.Stage, "stage", MaxString)
	b.str(&e.RequestURI, "requestURI", MaxString)
	b.str(&e.Verb, "verb", MaxString)
	b.user(e.User, "user")
	b.user(e.ImpersonatedUser, "impersonatedUser")
	e.SourceIPs = b.list(e.SourceIPs, "sourceIPs", true)
	b.str(&e.UserAgent, "userAgent", MaxString)
	if r := e.ObjectRef; r != nil {
		b.str(&r.Resource, "objectRef.resource", MaxString)
		b.str(&r.Namespace, "objectRef.namespace", MaxString)
		b.str(&r.Name, "objectRef.name", MaxString)
		b.str(&r.UID, "objectRef.uid", MaxString)
		b.str(&r.APIGroup, "objectRef.apiGroup", MaxString)
		b.str(&r.APIVersion, "objectRef.apiVersion", MaxString)
		b.str(&r.Subresource, "objectRef.subresource", MaxString)
	}
	if s := e.ResponseStatus; s != nil {
		b.str(&s.Status, "responseStatus.status", MaxString)
		b.str(&s.Message, "responseStatus.message", MaxString)
		b.str(&s.Reason, "responseStatus.reason", MaxString)
	}
	if ro := e.RequestObject; ro != nil {
		ro.Spec.Audiences = b.list(ro.Spec.Audiences, "requestObject.spec.audiences", false)
		if r := ro.Spec.BoundObjectRef; r != nil {
			b.str(&r.Kind, "requestObject.spec.boundObjectRef.kind", MaxString)
			b.str(&r.APIVersion, "requestObject.spec.boundObjectRef.apiVersion", MaxString)
			b.str(&r.Name, "requestObject.spec.boundObjectRef.name", MaxString)
			b.str(&r.UID, "requestObject.spec.boundObjectRef.uid", MaxString)
		}
	}
	b.str(&e.RequestReceivedTimestamp, "requestReceivedTimestamp", MaxString)
	b.str(&e.StageTimestamp, "stageTimestamp", MaxString)
	e.Annotations = b.annotations(e.Annotations, "annotations")
	e.Truncated = mergeMarks(e.Truncated, b.cut)
}

// mergeMarks returns the sorted union of a and b.
func mergeMarks(a, b []string) []string {
	if len(a)+len(b) == 0 {
		return a
	}
	m := append(slices.Clone(a), b...)
	slices.Sort(m)
	return slices.Compact(m)
}

type bounder struct{ cut []string }

func (b *bounder) mark(path string) {
	if len(b.cut) == 0 || b.cut[len(b.cut)-1] != path {
		b.cut = append(b.cut, path)
	}
}

func (b *bounder) str(s *string, path string, max int) {
	if len(*s) > max {
		*s = Cut(*s, max)
		b.mark(path)
	}
}

func (b *bounder) user(u *UserInfo, path string) {
	if u == nil {
		return
	}
	b.str(&u.Username, path+".username", MaxIdentity)
	b.str(&u.UID, path+".uid", MaxIdentity)
	u.Groups = b.list(u.Groups, path+".groups", false)
	u.Extra = b.extra(u.Extra, path+".extra")
}

// list bounds a list: its entries cut to MaxEntry, at most MaxEntries of
// them within MaxListBytes, the first ones (the last ones when last).
func (b *bounder) list(l []string, path string, last bool) []string {
	out, cut := boundList(l, last)
	if cut {
		b.mark(path)
	}
	return out
}

func boundList(l []string, last bool) ([]string, bool) {
	fits := len(l) <= MaxEntries
	cost := 0
	for _, s := range l {
		cost += len(s) + entryCost
		fits = fits && len(s) <= MaxEntry
	}
	if fits && cost <= MaxListBytes {
		return l, false
	}
	out := make([]string, 0, min(len(l), MaxEntries))
	cost = 0
	for i := range l {
		j := i
		if last {
			j = len(l) - 1 - i
		}
		s := Cut(l[j], MaxEntry)
		if len(out) == MaxEntries || cost+len(s)+entryCost > MaxListBytes {
			break
		}
		cost += len(s) + entryCost
		out = append(out, s)
	}
	if last {
		slices.Reverse(out)
	}
	return out, true
}

// annotations bounds a map of strings: keys and values cut to MaxEntry, at
// most MaxEntries entries within MaxListBytes, in order of the cut keys.
func (b *bounder) annotations(m map[string]string, path string) map[string]string {
	if len(m) == 0 {
		return m
	}
	fits := len(m) <= MaxEntries
	cost := 0
	for k, v := range m {
		cost += len(k) + len(v) + 2*entryCost
		fits = fits && len(k) <= MaxEntry && len(v) <= MaxEntry
	}
	if fits && cost <= MaxListBytes {
		return m
	}
	b.mark(path)
	cut := make(map[string]string, len(m))
	for k, v := range m {
		cut[Cut(k, MaxEntry)] = Cut(v, MaxEntry)
	}
	out := make(map[string]string, min(len(cut), MaxEntries))
	cost = 0
	for _, k := range sortedKeys(cut) {
		c := len(k) + len(cut[k]) + 2*entryCost
		if len(out) == MaxEntries || cost+c > MaxListBytes {
			break
		}
		cost += c
		out[k] = cut[k]
	}
	return out
}

// extra bounds user.extra: keys cut to MaxEntry, each value list bounded as
// a list, at most MaxEntries keys within MaxListBytes (keys and values
// counted together), in order of the cut keys.
func (b *bounder) extra(m map[string][]string, path string) map[string][]string {
	if len(m) == 0 {
		return m
	}
	fits := len(m) <= MaxEntries
	cost := 0
	for k, v := range m {
		cost += len(k) + entryCost
		for _, s := range v {
			cost += len(s) + entryCost
		}
		_, cut := boundList(v, false)
		fits = fits && len(k) <= MaxEntry && !cut
	}
	if fits && cost <= MaxListBytes {
		return m
	}
	b.mark(path)
	cut := make(map[string][]string, len(m))
	for k, v := range m {
		cut[Cut(k, MaxEntry)], _ = boundList(v, false)
	}
	out := make(map[string][]string, min(len(cut), MaxEntries))
	cost = 0
	for _, k := range sortedKeys(cut) {
		c := len(k) + entryCost
		for _, s := range cut[k] {
			c += len(s) + entryCost
		}
		if len(out) == MaxEntries || cost+c > MaxListBytes {
			break
		}
		cost += c
		out[k] = cut[k]
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
