package lineage

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// Use takes a request an agent matched (kinds: the watches, or the
// legacy-token annotation, it matched; nil: decide from e alone; lookback:
// read before the watch reached the agent). A use of a watched token adds
// to its summary and yields a token_use record when it brings a new
// reason; a followed minter's sensitive action yields an actor_followup;
// a legacy-token request adds to its service account's summary.
func (s *State) Use(now time.Time, src Source, e *audit.Event, kinds []Kind, lookback bool) Effects {
	var fx Effects
	if !s.cfg.Enabled || e == nil {
		return fx
	}
	t := detect.Time(e)
	if has(kinds, KindToken) {
		s.tokenUse(now, src, e, t, lookback, &fx)
	}
	if has(kinds, KindActorUser) || has(kinds, KindActorCredential) {
		s.actorUse(now, src, e, t, lookback, &fx)
	}
	if has(kinds, KindLegacy) {
		if sa := LegacyServiceAccount(e); sa != "" && !s.skipLegacy(src.Cluster, sa) {
			s.legacyUsage(now, src.Cluster, sa, &fx).addEvent(src.Cluster, e)
		}
	}
	return fx
}

func has(kinds []Kind, k Kind) bool { return kinds == nil || slices.Contains(kinds, k) }

func (s *State) skipLegacy(cluster, sa string) bool {
	return s.hooks.SkipLegacy != nil && s.hooks.SkipLegacy(cluster, sa)
}

// Count adds an agent's count of requests it did not send: to a watched
// token's summary (KindToken) or to a legacy service account's in src's
// cluster (KindLegacy).
func (s *State) Count(now time.Time, src Source, c Count) Effects {
	var fx Effects
	if !s.cfg.Enabled || c.Uses == 0 {
		return fx
	}
	switch c.Kind {
	case KindToken:
		if t := s.tokens[c.Key]; t != nil && now.Before(t.FreeAt) {
			s.tokenUsage(now, t, &fx).addCount(src.Cluster, &c)
		}
	case KindLegacy:
		if strings.HasPrefix(c.Key, saPrefix) && !s.skipLegacy(src.Cluster, c.Key) {
			s.legacyUsage(now, src.Cluster, c.Key, &fx).addCount(src.Cluster, &c)
		}
	}
	return fx
}

// tokenUsage returns t's usage of now's interval, emitting an ended one.
func (s *State) tokenUsage(now time.Time, t *token, fx *Effects) *usage {
	start := intervalStart(now, s.cfg.SummaryInterval)
	if t.Usage != nil && !t.Usage.Start.Equal(start) {
		s.emitSummary(now, t, fx)
	}
	if t.Usage == nil {
		t.Usage = newUsage(start)
		s.open[t.Mint.JTI] = true
	}
	s.touchToken(t)
	return t.Usage
}

// legacyUsage returns the usage of now's interval of sa in cluster,
// emitting an ended one.
func (s *State) legacyUsage(now time.Time, cluster, sa string, fx *Effects) *usage {
	id := legacyID(cluster, sa)
	start := intervalStart(now, s.cfg.SummaryInterval)
	l := s.legacy[id]
	if l != nil && !l.Usage.Start.Equal(start) {
		s.emitLegacy(now, id, fx)
		l = nil
	}
	if l == nil {
		l = &legacy{Cluster: cluster, ServiceAccount: sa, Usage: newUsage(start)}
		s.legacy[id] = l
	}
	s.dirty["legacy/"+id] = true
	return l.Usage
}

// reason is a reason that holds for a use, with its key.
type reason struct{ name, key string }

// reasons returns the reasons that hold for a use of t from ip in cluster
// (action: its sensitive action in namespace ns, if any). first_use and
// new_source_ip hold only while new; source_ip_differs_from_mint holds
// for every use from another IP than the mint's (both known) and is
// reported once per token.
func (t *token) reasons(cluster, ip, action, ns string) []reason {
	var rs []reason
	if len(t.Reported[ReasonFirstUse]) == 0 {
		rs = append(rs, reason{ReasonFirstUse, ""})
	}
	if ip != "" && t.Mint.SourceIP != "" && ip != t.Mint.SourceIP {
		rs = append(rs, reason{ReasonSourceIPDiffers, ""})
	}
	if ip != "" && ip != t.Mint.SourceIP && !slices.Contains(t.Reported[ReasonNewSourceIP], ip) {
		rs = append(rs, reason{ReasonNewSourceIP, ip})
	}
	if cluster != t.Mint.Cluster {
		rs = append(rs, reason{ReasonOtherCluster, cluster})
	}
	if action != "" {
		rs = append(rs, reason{ReasonSensitiveAction, action + " " + ns})
	}
	return rs
}

// report marks the reasons of rs not reported before for t as reported
// and returns their names. A reason whose keys reached maxTracked is not
// reported again.
func (t *token) report(rs []reason) []string {
	var news []string
	for _, r := range rs {
		keys := t.Reported[r.name]
		if slices.Contains(keys, r.key) || len(keys) >= maxTracked {
			continue
		}
		if t.Reported == nil {
			t.Reported = map[string][]string{}
		}
		t.Reported[r.name] = append(keys, r.key)
		news = append(news, r.name)
	}
	return news
}

// tokenUse handles e when it authenticated with a token watched at t.
func (s *State) tokenUse(now time.Time, src Source, e *audit.Event, t time.Time, lookback bool, fx *Effects) {
	tok := s.watched(CredentialJTI(e.User), t, now)
	if tok == nil {
		return
	}
	s.tokenUsage(now, tok, fx).addEvent(src.Cluster, e)
	action := Action(e)
	var ns string
	if e.ObjectRef != nil {
		ns = e.ObjectRef.Namespace
	}
	rs := tok.reasons(src.Cluster, e.SourceIP(), action, ns)
	news := tok.report(rs)
	if len(news) == 0 {
		return
	}
	fx.Records = append(fx.Records, tokenUseRecord(src, e, tok, rs, news, action, lookback))
}

func tokenUseRecord(src Source, e *audit.Event, t *token, rs []reason, news []string, action string, lookback bool) alert.Record {
	sev := alert.Medium
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.name
		if r.name != ReasonFirstUse {
			sev = alert.High
		}
	}
	a := requestAttrs(src, e)
	a = append(a, alert.Strings(AttrReasons, names), alert.Strings(AttrNewReasons, news))
	if action != "" {
		a = append(a, alert.String(AttrAction, action))
	}
	if lookback {
		a = append(a, alert.Bool("tokenwatch.lineage.lookback", true))
	}
	a = append(a, mintAttrs(&t.Mint, t.Root, t.Depth)...)
	return alert.Record{
		ID:        recordID("tu-", detect.KeyOf(src, e).String(), string(KindToken), t.Mint.JTI),
		EventName: EventTokenUse,
		Time:      detect.Time(e),
		Severity:  sev,
		Body: fmt.Sprintf("%s used the token minted by %s for service account %s/%s in cluster %s: %s from %s in cluster %s (new: %s).",
			orUnknown(e.Username()), orUnknown(t.Mint.User), t.Mint.Namespace, t.Mint.Name, t.Mint.Cluster,
			VerbKey(e), orUnknown(e.SourceIP()), src.Cluster, strings.Join(news, ", ")),
		Attrs: a,
	}
}

// actorUse handles e when its user, or the credential it used, is a
// followed minter and e is a sensitive action.
func (s *State) actorUse(now time.Time, src Source, e *audit.Event, t time.Time, lookback bool, fx *Effects) {
	action := Action(e)
	if action == "" {
		return
	}
	for _, id := range []string{actorID(KindActorUser, e.Username()), actorID(KindActorCredential, CredentialJTI(e.User))} {
		a := s.actors[id]
		if a == nil {
			continue
		}
		am := a.window(now, t)
		if am == nil {
			continue
		}
		key := followupKey(action, src.Cluster, e.ObjectRef)
		if slices.Contains(am.Reported, key) || len(am.Reported) >= maxTracked {
			continue
		}
		am.Reported = append(am.Reported, key)
		s.dirty["actor/"+id] = true
		fx.Records = append(fx.Records, followupRecord(src, e, a, am, action, lookback))
	}
}

// window returns the latest mint of a whose window holds t and which is
// held at now.
func (a *actor) window(now, t time.Time) *actorMint {
	for i := len(a.Mints) - 1; i >= 0; i-- {
		am := &a.Mints[i]
		if now.Before(am.FreeAt) && !t.Before(am.Mint.Time) && !t.After(am.Until) {
			return am
		}
	}
	return nil
}

// followupKey is the (action, cluster, namespace, resource, name) an
// actor_followup is reported once for per window.
func followupKey(action, cluster string, ref *audit.ObjectReference) string {
	var r audit.ObjectReference
	if ref != nil {
		r = *ref
	}
	res := r.Resource
	if r.Subresource != "" {
		res += "/" + r.Subresource
	}
	return strings.Join([]string{action, strconv.Quote(cluster), strconv.Quote(r.Namespace), strconv.Quote(res), strconv.Quote(r.Name)}, " ")
}

func followupRecord(src Source, e *audit.Event, a *actor, am *actorMint, action string, lookback bool) alert.Record {
	attrs := requestAttrs(src, e)
	attrs = append(attrs, alert.String(AttrAction, action))
	if lookback {
		attrs = append(attrs, alert.Bool("tokenwatch.lineage.lookback", true))
	}
	attrs = append(attrs, mintAttrs(&am.Mint, "", 0)...)
	return alert.Record{
		ID:        recordID("af-", detect.KeyOf(src, e).String(), string(a.Kind), a.Key),
		EventName: EventActorFollowup,
		Time:      detect.Time(e),
		Severity:  alert.High,
		Body: fmt.Sprintf("%s, who minted a token for service account %s/%s in cluster %s at %s, then did %s (%s) in cluster %s from %s.",
			orUnknown(am.Mint.User), am.Mint.Namespace, am.Mint.Name, am.Mint.Cluster, rfc3339(am.Mint.Time),
			action, VerbKey(e), src.Cluster, orUnknown(e.SourceIP())),
		Attrs: attrs,
	}
}
