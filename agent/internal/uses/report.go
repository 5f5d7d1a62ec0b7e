package uses

import (
	"cmp"
	"hash/maphash"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Bounds of one count (UseCount): the contract's array bound.
const (
	maxCountIPs   = 100
	maxCountVerbs = 100
	// otherVerbs is the verb key of the requests past maxCountVerbs keys.
	otherVerbs = "other"
)

// countKey names a count: a token's JTI or a legacy service account.
type countKey struct {
	kind tokenwatchv1.LineageKind
	key  string
}

// count accumulates the requests of one token or legacy service account
// that were not sent one by one.
type count struct {
	uses        uint64
	verbs       map[string]uint64
	verbOrder   []string
	ips         []string
	codes       map[string]uint64
	first, last time.Time
	firstS      string
	lastS       string
	user        string
}

func (c *count) add(e *audit.Event) {
	c.uses++
	v := verbKey(e)
	if _, ok := c.verbs[v]; !ok && len(c.verbs) >= maxCountVerbs {
		v = otherVerbs
	}
	if _, ok := c.verbs[v]; !ok {
		c.verbOrder = append(c.verbOrder, v)
	}
	c.verbs[v]++
	if ip := e.SourceIP(); ip != "" && len(c.ips) < maxCountIPs && !slices.Contains(c.ips, ip) {
		c.ips = append(c.ips, ip)
	}
	code := "0"
	if e.ResponseStatus != nil {
		code = strconv.Itoa(int(e.ResponseStatus.Code))
	}
	c.codes[code]++
	if t, err := time.Parse(time.RFC3339Nano, e.RequestReceivedTimestamp); err == nil {
		if c.firstS == "" || t.Before(c.first) {
			c.first, c.firstS = t, e.RequestReceivedTimestamp
		}
		if c.lastS == "" || t.After(c.last) {
			c.last, c.lastS = t, e.RequestReceivedTimestamp
		}
	}
	c.user = e.Username()
}

// verbKey is "verb resource[/subresource] namespace" of e.
func verbKey(e *audit.Event) string {
	res, ns := "", ""
	if r := e.ObjectRef; r != nil {
		res, ns = r.Resource, r.Namespace
		if r.Subresource != "" {
			res += "/" + r.Subresource
		}
	}
	return e.Verb + " " + res + " " + ns
}

func (c *count) proto(k countKey) *tokenwatchv1.UseCount {
	u := &tokenwatchv1.UseCount{Kind: k.kind, Key: k.key, Uses: c.uses, SourceIps: c.ips, User: c.user}
	for _, v := range c.verbOrder {
		u.Verbs = append(u.Verbs, &tokenwatchv1.KeyCount{Key: v, Count: c.verbs[v]})
	}
	codes := make([]string, 0, len(c.codes))
	for code := range c.codes {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	for _, code := range codes {
		u.Codes = append(u.Codes, &tokenwatchv1.KeyCount{Key: code, Count: c.codes[code]})
	}
	if c.firstS != "" {
		u.First, u.Last = timestamppb.New(c.first), timestamppb.New(c.last)
	}
	return u
}

// reporter decides, for each matched request, whether it is sent as a use
// or counted: the first request per (token, reason key) is sent, the rest
// counted; a followed minter's sensitive actions are always sent; a
// legacy-token request is always counted. Not safe for concurrent use.
type reporter struct {
	maxKeys int
	seen    map[string][]uint64 // per token JTI: the hashes of the reason keys sent
	seed    maphash.Seed
	counts  map[countKey]*count
	counted uint64 // requests counted, ever
}

func newReporter(maxKeys int) *reporter {
	return &reporter{maxKeys: maxKeys, seen: map[string][]uint64{}, seed: maphash.MakeSeed(), counts: map[countKey]*count{}}
}

// reasonKeys are the reason keys of a use of a token: its source IP and,
// for a sensitive action, the action and namespace.
func reasonKeys(e *audit.Event) []string {
	keys := []string{"ip " + e.SourceIP()}
	if a := lineage.Action(e); a != "" {
		ns := ""
		if e.ObjectRef != nil {
			ns = e.ObjectRef.Namespace
		}
		keys = append(keys, "action "+a+" "+ns)
	}
	return keys
}

// decide returns whether e, matched as kinds, is to be sent; when not, it
// is counted.
func (r *reporter) decide(e *audit.Event, kinds linematch.Kind) bool {
	jti := ""
	if kinds&(linematch.Token|linematch.ActorCredential) != 0 {
		jti = lineage.CredentialJTI(e.User)
	}
	switch {
	case kinds&(linematch.ActorUser|linematch.ActorCredential) != 0:
		if kinds&linematch.Token != 0 {
			r.firstUse(jti, e) // a sensitive action: remembered, sent anyway
		}
		return true
	case kinds&linematch.Token != 0:
		if r.firstUse(jti, e) {
			return true
		}
		r.count(countKey{tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, jti}, e)
	case kinds&linematch.Legacy != 0:
		r.count(countKey{tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN, lineage.LegacyServiceAccount(e)}, e)
	}
	return false
}

// firstUse records e's reason keys for the token jti and reports whether
// one of them is new and could be remembered (at most maxKeys per token).
// A token's keys are kept as 64-bit hashes (a collision would count a
// use that brings a new key: negligible at 2^-64 per pair).
func (r *reporter) firstUse(jti string, e *audit.Event) bool {
	seen := r.seen[jti]
	fresh := false
	for _, k := range reasonKeys(e) {
		h := maphash.String(r.seed, k)
		if slices.Contains(seen, h) || len(seen) >= r.maxKeys {
			continue
		}
		seen = append(seen, h)
		fresh = true
	}
	if fresh {
		r.seen[jti] = slices.Clip(seen)
	}
	return fresh
}

func (r *reporter) count(k countKey, e *audit.Event) {
	c := r.counts[k]
	if c == nil {
		c = &count{verbs: map[string]uint64{}, codes: map[string]uint64{}}
		r.counts[k] = c
	}
	c.add(e)
	r.counted++
}

// forget drops what is remembered of the token jti (no longer watched).
func (r *reporter) forget(jti string) { delete(r.seen, jti) }

// pending reports whether counts wait to be sent.
func (r *reporter) pending() bool { return len(r.counts) > 0 }

// take returns the counts accumulated since the last take, in a stable
// order, and starts new ones.
func (r *reporter) take() []*tokenwatchv1.UseCount {
	if len(r.counts) == 0 {
		return nil
	}
	keys := make([]countKey, 0, len(r.counts))
	for k := range r.counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b countKey) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.key, b.key))
	})
	out := make([]*tokenwatchv1.UseCount, len(keys))
	for i, k := range keys {
		out[i] = r.counts[k].proto(k)
	}
	clear(r.counts)
	return out
}
