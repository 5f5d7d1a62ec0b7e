package lineage

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// maxActorMints bounds the mints an actor entry remembers (the most
// recent ones); an action is attributed to the latest mint before it.
const maxActorMints = 32

// token is a watched token: one entry, by JTI.
type token struct {
	Mint Mint `json:"mint"`
	// FreeAt (aggregator clock) is when the entry is freed: TTL + lookback
	// after the aggregator learnt of the mint.
	FreeAt time.Time `json:"free_at"`
	Parent string    `json:"parent,omitempty"`
	Root   string    `json:"root"` // the chain's first non-token minter
	Depth  int       `json:"depth,omitempty"`
	// Reported holds, per reason, the keys already reported.
	Reported map[string][]string `json:"reported,omitempty"`
	Usage    *usage              `json:"usage,omitempty"` // the open summary interval's
}

// actor is a followed minter: one entry, by kind and key.
type actor struct {
	Kind  Kind        `json:"kind"`
	Key   string      `json:"key"`
	Mints []actorMint `json:"mints"` // by Mint.Time, oldest first
}

// actorMint is one mint's window of an actor.
type actorMint struct {
	Mint   Mint      `json:"mint"`
	Until  time.Time `json:"until"`   // Mint.Time + actor_window
	FreeAt time.Time `json:"free_at"` // aggregator clock
	// Reported holds the (action, cluster, namespace, resource, name) keys
	// of the actor_followup records of this window.
	Reported []string `json:"reported,omitempty"`
}

// legacy accumulates a legacy-token service account's uses in one cluster.
type legacy struct {
	Cluster        string `json:"cluster"`
	ServiceAccount string `json:"service_account"`
	Usage          *usage `json:"usage"`
}

// full counts the watches max_watched dropped in one summary interval.
type full struct {
	Start   time.Time         `json:"start"`
	Dropped uint64            `json:"dropped"`
	Minters map[string]uint64 `json:"minters"`
}

// State is lineage's state: watched tokens, followed minters, summary and
// legacy accumulators, and what was already reported. It is not safe for
// concurrent use.
type State struct {
	cfg    Config
	hooks  Hooks
	tokens map[string]*token  // by JTI
	actors map[string]*actor  // by actorID
	legacy map[string]*legacy // by legacyID
	full   *full

	minters map[string]*minter
	heap    minterHeap
	open    map[string]bool // JTIs with a Usage
	dirty   map[string]bool // entry keys changed since Changes
	// nextFree is a lower bound of the earliest FreeAt held.
	nextFree time.Time
}

// New returns an empty state for cfg, which is assumed valid.
func New(cfg Config, h Hooks) *State {
	return &State{
		cfg: cfg, hooks: h,
		tokens: map[string]*token{}, actors: map[string]*actor{}, legacy: map[string]*legacy{},
		minters: map[string]*minter{}, open: map[string]bool{}, dirty: map[string]bool{},
	}
}

// SetHooks replaces the hooks (after a reload of the exclusions).
func (s *State) SetHooks(h Hooks) { s.hooks = h }

// Config returns the configuration in force.
func (s *State) Config() Config { return s.cfg }

// Len returns the number of watched tokens held (freed ones included until
// the next Tick).
func (s *State) Len() int { return len(s.tokens) }

func actorID(k Kind, key string) string { return string(k) + "/" + key }

func legacyID(cluster, sa string) string { return strconv.Quote(cluster) + "/" + strconv.Quote(sa) }

// MintOf returns the Mint of e, an alerting token request read by src: false
// when lineage is off, or e issued no JTI or has no time.
func (s *State) MintOf(src Source, e *audit.Event) (Mint, bool) {
	jti := IssuedJTI(e)
	t := detect.Time(e)
	if !s.cfg.Enabled || jti == "" || t.IsZero() {
		return Mint{}, false
	}
	m := Mint{
		JTI: jti, AuditID: e.AuditID, Cluster: src.Cluster, User: e.Username(),
		SourceIP: e.SourceIP(), Time: t, Credential: CredentialJTI(e.User),
	}
	if e.ObjectRef != nil {
		m.Namespace, m.Name = e.ObjectRef.Namespace, e.ObjectRef.Name
	}
	m.Until, m.Capped = TTL(e, t, s.cfg)
	return m, true
}

// watched returns the token jti when it is held at now and t lies in its
// watch, nil otherwise.
func (s *State) watched(jti string, t, now time.Time) *token {
	if jti == "" {
		return nil
	}
	tok := s.tokens[jti]
	if tok == nil || !now.Before(tok.FreeAt) || t.Before(tok.Mint.Time) || t.After(tok.Mint.Until) {
		return nil
	}
	return tok
}

// Chain returns the chain of e, a token request, when it authenticated
// with a token watched at e's time. Such a request alerts (Chain.Alerts)
// at high severity with Chain.Attrs.
func (s *State) Chain(now time.Time, e *audit.Event) (Chain, bool) {
	if !s.cfg.Enabled || e == nil {
		return Chain{}, false
	}
	p := s.watched(CredentialJTI(e.User), detect.Time(e), now)
	if p == nil {
		return Chain{}, false
	}
	return Chain{ParentJTI: p.Mint.JTI, RootUser: p.Root, Depth: p.Depth + 1}, true
}

// Alerts reports whether a chain request judged v alerts: when it matches
// and no exclusion, or only one of the default list, excludes it (an
// explicit exclusions.add entry still wins).
func (Chain) Alerts(v rule.Verdict) bool { return v.Match && (!v.Excluded || v.ByDefault) }

// Apply adds the chain attributes to r, the request's token_request
// record, and raises it to high.
func (c Chain) Apply(r *alert.Record) {
	r.Attrs = append(r.Attrs, c.Attrs()...)
	r.Severity = alert.High
}

// Mint watches m's token until m.Until, follows its minter for
// actor_window, and drops the oldest watch of the minter holding the most
// when max_watched is exceeded. A token already watched (a retry) changes
// nothing.
func (s *State) Mint(now time.Time, m Mint) Effects {
	var fx Effects
	if !s.cfg.Enabled || m.JTI == "" {
		return fx
	}
	if old := s.tokens[m.JTI]; old != nil {
		if now.Before(old.FreeAt) {
			return fx
		}
		s.drop(now, old, &fx)
	}
	t := &token{Mint: m, FreeAt: now.Add(m.Until.Sub(m.Time) + s.cfg.Lookback), Root: m.User}
	parent := s.watched(m.Credential, m.Time, now)
	if parent != nil {
		t.Parent, t.Root, t.Depth = parent.Mint.JTI, parent.Root, parent.Depth+1
	}
	s.add(t)
	fx.Add = append(fx.Add, Watch{Kind: KindToken, Key: m.JTI, From: m.Time, Until: m.Until})
	if parent == nil {
		s.follow(now, m, &fx)
	}
	s.evict(now, m.User, &fx)
	return fx
}

// add holds t.
func (s *State) add(t *token) {
	s.tokens[t.Mint.JTI] = t
	s.index(t)
	s.touchToken(t)
	s.freeBy(t.FreeAt)
}

func (s *State) freeBy(t time.Time) {
	if s.nextFree.IsZero() || t.Before(s.nextFree) {
		s.nextFree = t
	}
}

func (s *State) touchToken(t *token) { s.dirty["token/"+t.Mint.JTI] = true }

// drop frees t, emitting its open summary.
func (s *State) drop(now time.Time, t *token, fx *Effects) {
	if t.Usage != nil {
		s.emitSummary(now, t, fx)
	}
	s.unindex(t)
	delete(s.tokens, t.Mint.JTI)
	delete(s.open, t.Mint.JTI)
	s.touchToken(t)
}

// evict drops watches while more than max_watched are held.
func (s *State) evict(now time.Time, current string, fx *Effects) {
	for len(s.tokens) > s.cfg.MaxWatched {
		v := s.victim(current)
		if v == nil {
			return
		}
		s.drop(now, v, fx)
		s.countDropped(now, v.Mint.User, fx)
		if i := slices.IndexFunc(fx.Add, func(w Watch) bool { return w.Kind == KindToken && w.Key == v.Mint.JTI }); i >= 0 {
			fx.Add = slices.Delete(fx.Add, i, i+1)
			continue
		}
		fx.Remove = append(fx.Remove, Watch{Kind: KindToken, Key: v.Mint.JTI})
	}
}

// follow follows m's minter for actor_window: a user by name; a service
// account by the token it minted with (not at all without one); not a
// system:* name an exclusion would have excluded.
func (s *State) follow(now time.Time, m Mint, fx *Effects) {
	if s.cfg.ActorWindow <= 0 || m.User == "" {
		return
	}
	kind, key := KindActorUser, m.User
	switch {
	case strings.HasPrefix(m.User, saPrefix):
		if m.Credential == "" {
			return
		}
		kind, key = KindActorCredential, m.Credential
	case strings.HasPrefix(m.User, "system:") && s.hooks.SkipActor != nil && s.hooks.SkipActor(m.User):
		return
	}
	id := actorID(kind, key)
	a := s.actors[id]
	if a == nil {
		a = &actor{Kind: kind, Key: key}
		s.actors[id] = a
	}
	if slices.ContainsFunc(a.Mints, func(am actorMint) bool { return am.Mint.JTI == m.JTI }) {
		return
	}
	am := actorMint{Mint: m, Until: m.Time.Add(s.cfg.ActorWindow), FreeAt: now.Add(s.cfg.ActorWindow + s.cfg.Lookback)}
	i, _ := slices.BinarySearchFunc(a.Mints, m.Time, func(x actorMint, t time.Time) int { return x.Mint.Time.Compare(t) })
	a.Mints = slices.Insert(a.Mints, i, am)
	if len(a.Mints) > maxActorMints {
		a.Mints = slices.Delete(a.Mints, 0, len(a.Mints)-maxActorMints)
	}
	s.dirty["actor/"+id] = true
	s.freeBy(am.FreeAt)
	fx.Add = append(fx.Add, a.watch())
}

// watch is the watch of a's windows.
func (a *actor) watch() Watch {
	w := Watch{Kind: a.Kind, Key: a.Key}
	for i, am := range a.Mints {
		if i == 0 || am.Mint.Time.Before(w.From) {
			w.From = am.Mint.Time
		}
		if am.Until.After(w.Until) {
			w.Until = am.Until
		}
	}
	return w
}

// Watches returns the watch set to push to a newly connected agent: empty
// when lineage is off.
func (s *State) Watches(now time.Time) []Watch {
	if !s.cfg.Enabled {
		return nil
	}
	var out []Watch
	for _, jti := range sortedSet(s.tokens) {
		if t := s.tokens[jti]; now.Before(t.FreeAt) {
			out = append(out, Watch{Kind: KindToken, Key: jti, From: t.Mint.Time, Until: t.Mint.Until})
		}
	}
	for _, id := range sortedSet(s.actors) {
		a := s.actors[id]
		if slices.ContainsFunc(a.Mints, func(am actorMint) bool { return now.Before(am.FreeAt) }) {
			out = append(out, a.watch())
		}
	}
	return out
}
