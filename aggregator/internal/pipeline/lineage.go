package pipeline

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// KindLineageUnsupported is the tokenwatch.pipeline.kind of the record of
// an agent that does not declare lineage support.
const KindLineageUnsupported = "lineage_unsupported_agent"

// Use is a request an agent sent for lineage (Batch.uses).
type Use struct {
	Event    *audit.Event
	Kinds    []lineage.Kind // what it matched; nil: decide from the event
	Lookback bool
}

// unsupportedKey names one agent build reported as lacking lineage.
type unsupportedKey struct{ cluster, node, version string }

// Watches returns the current watch set, for a newly connected agent:
// empty when lineage is off.
func (p *Pipeline) Watches() []lineage.Watch {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lin == nil {
		return nil
	}
	return p.lin.Watches(p.now())
}

// LineageConfig returns the lineage configuration in force (read at start).
func (p *Pipeline) LineageConfig() lineage.Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.linCfg
}

// LineageUnsupported reports an agent that does not declare lineage
// support: a tokenwatch.pipeline record of kind lineage_unsupported_agent,
// committed at most once per (cluster, node, agent version) per process
// run, and counted in the gauge tokenwatch_aggregator_lineage_unsupported_agents.
// Nothing is reported while lineage is off.
func (p *Pipeline) LineageUnsupported(ctx context.Context, src detect.Source, agentVersion string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k := unsupportedKey{src.Cluster, src.Node, agentVersion}
	p.mu.Lock()
	if !p.linCfg.Enabled || p.unsupported[k] {
		p.mu.Unlock()
		return nil
	}
	rec := unsupportedRecord(src, agentVersion, p.now(), p.runID)
	p.unsupported[k] = true
	wait := p.store.Submit(state.Change{Records: []alert.Record{rec}})
	p.mu.Unlock()
	if _, err := wait(); err != nil {
		p.mu.Lock()
		delete(p.unsupported, k) // report it on the agent's next try
		p.mu.Unlock()
		return fmt.Errorf("lineage unsupported agent: %w", err)
	}
	p.m.lineageRecords([]string{alert.EventPipeline})
	return nil
}

// unsupportedRecord is the lineage_unsupported_agent record of an agent.
// Its ID is unique to this process run (runID), so that each run reports
// the agent once.
func unsupportedRecord(src detect.Source, version string, now time.Time, runID string) alert.Record {
	h := sha256.New()
	for _, s := range []string{runID, src.Cluster, src.Node, version} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return alert.Record{
		ID:        "lineage-unsupported-" + hex.EncodeToString(h.Sum(nil)[:16]),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.Medium,
		Body: fmt.Sprintf("The tokenwatch agent %s on node %s of cluster %s does not support token lineage: uses of watched tokens on that node are not reported.",
			version, src.Node, src.Cluster),
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", KindLineageUnsupported),
			alert.String("k8s.cluster.name", src.Cluster),
			alert.String("k8s.node.name", src.Node),
			alert.String("tokenwatch.agent.version", version),
		},
	}
}

// newRunID returns an identifier of this process run.
func newRunID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// openLineage builds the lineage state from the store, with the
// configuration read at start, and registers its metrics.
func (p *Pipeline) openLineage(reg prometheus.Registerer) error {
	lin, err := p.loadLineage()
	if err != nil {
		return err
	}
	p.lin = lin
	if reg == nil {
		return nil
	}
	gauge := func(name, help string, f func() int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			p.mu.Lock()
			defer p.mu.Unlock()
			return float64(f())
		})
	}
	for _, c := range []prometheus.Collector{
		gauge("tokenwatch_aggregator_lineage_watched",
			"Tokens token lineage watches (0 while lineage is off).",
			func() int {
				if !p.linCfg.Enabled {
					return 0
				}
				return p.lin.Len()
			}),
		gauge("tokenwatch_aggregator_lineage_unsupported_agents",
			"Agents (cluster, node, agent version) reported since the start as not declaring lineage support: they are pushed no watches.",
			func() int { return len(p.unsupported) }),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register lineage metrics: %w", err)
		}
	}
	return nil
}

// chainScreen decides, before a batch's lifecycle, which token creates a
// default exclusion excludes may be chains (their credential a watched
// token, or one an earlier request of the batch minted): those go through
// the lifecycle as candidates, and the lineage step decides, in batch
// order, whether each is one. It holds p.mu from its first look at the
// lineage state until done.
type chainScreen struct {
	p      *Pipeline
	locked bool
	now    time.Time
	minted map[string]bool // JTIs issued by candidates of the batch
}

// maybe reports whether e, judged v, may be a chain that overrides its
// exclusion.
func (c *chainScreen) maybe(e *audit.Event, v rule.Verdict) bool {
	if !c.p.linCfg.Enabled || !v.Match || !v.Excluded || !v.ByDefault {
		return false
	}
	cred := lineage.CredentialJTI(e.User)
	if cred == "" {
		return false
	}
	if c.minted[cred] {
		return true
	}
	if !c.locked {
		c.p.mu.Lock()
		c.locked, c.now = true, c.p.now()
	}
	_, ok := c.p.lin.Chain(c.now, e)
	return ok
}

// minting notes the token e, a candidate, minted.
func (c *chainScreen) minting(e *audit.Event) {
	if jti := lineage.IssuedJTI(e); jti != "" && c.p.linCfg.Enabled {
		if c.minted == nil {
			c.minted = map[string]bool{}
		}
		c.minted[jti] = true
	}
}

// use reports whether e, an excluded token create, is still a lineage use
// (of the token it authenticated with): at its final stage, with a token
// credential.
func (c *chainScreen) use(e *audit.Event) bool {
	return c.p.linCfg.Enabled && e.Stage != audit.StageRequestReceived && e.Stage != audit.StageResponseStarted &&
		lineage.CredentialJTI(e.User) != ""
}

func (c *chainScreen) done() {
	if c.locked {
		c.p.mu.Unlock()
	}
}

// chainVerdictLocked returns v, e's verdict, as one that alerts when e is
// a chain that overrides its exclusion. p.mu must be held.
func (p *Pipeline) chainVerdictLocked(now time.Time, e *audit.Event, v rule.Verdict) rule.Verdict {
	if v.Alerts() || e == nil {
		return v
	}
	if c, ok := p.lin.Chain(now, e); ok && c.Alerts(v) {
		v.Excluded, v.By, v.ByDefault = false, "", false
	}
	return v
}

// lineageRun collects what lineage did within one batch or tick.
type lineageRun struct {
	recs        []alert.Record
	add, remove []lineage.Watch
	// names are the event names of the lineage records committed.
	names []string
	// entries: the change carries lineage entries.
	entries bool
}

// merge adds fx to r. A watch added and then removed within the run never
// reached an agent: both go; a watch added twice (an actor followed for
// another mint) is pushed once, as it is last.
func (r *lineageRun) merge(fx lineage.Effects) {
	r.recs = append(r.recs, fx.Records...)
	same := func(w lineage.Watch) func(lineage.Watch) bool {
		return func(x lineage.Watch) bool { return x.Kind == w.Kind && x.Key == w.Key }
	}
	for _, w := range fx.Add {
		r.add = slices.DeleteFunc(r.add, same(w))
		r.remove = slices.DeleteFunc(r.remove, same(w))
		r.add = append(r.add, w)
	}
	for _, w := range fx.Remove {
		if i := slices.IndexFunc(r.add, same(w)); i >= 0 {
			r.add = slices.Delete(r.add, i, i+1)
			continue
		}
		r.remove = append(r.remove, w)
	}
}

// lineageHooks answer lineage's questions with r, the rule in force.
func lineageHooks(r *rule.Rule) lineage.Hooks {
	return lineage.Hooks{
		// A minter an exclusion excludes (whatever it mints for) is not
		// followed.
		SkipActor: func(user string) bool { return r.Judge(mintSubject(user)).Excluded },
		// A legacy token's service account an exclusions.add entry
		// excludes is not reported; the default list alone does not count.
		SkipLegacy: func(_, sa string) bool {
			v := r.Judge(mintSubject(sa))
			return v.Excluded && !v.ByDefault
		},
	}
}

// mintSubject is a token create by user with no target, in the groups its
// kind of name always has (so that strict_groups does not stand in the
// way): an exclusion that excludes it excludes the user whatever it mints
// for.
func mintSubject(user string) *rule.Subject {
	s := &rule.Subject{User: user, Verb: "create", Resource: "serviceaccounts", Subresource: "token",
		Groups: []string{"system:authenticated"}}
	if strings.HasPrefix(user, "system:node:") {
		s.Groups = append(s.Groups, "system:nodes")
	}
	if rest, ok := strings.CutPrefix(user, "system:serviceaccount:"); ok {
		ns, _, _ := strings.Cut(rest, ":")
		s.Groups = append(s.Groups, "system:serviceaccounts", "system:serviceaccounts:"+ns)
	}
	return s
}

// loadLineage builds the lineage state from the entries stored, with the
// configuration read at start. Entries that cannot be read are logged and
// deleted: what they held is lost, the rest is kept.
func (p *Pipeline) loadLineage() (*lineage.State, error) {
	entries, broken, err := p.store.LineageEntries()
	if err != nil {
		return nil, fmt.Errorf("load lineage: %w", err)
	}
	for _, b := range broken {
		p.logger.Error("lineage entry unreadable, dropped", "err", b.Err)
	}
	if err := p.store.DropLineage(broken); err != nil {
		return nil, fmt.Errorf("load lineage: %w", err)
	}
	slices.SortFunc(entries, func(a, b lineage.Entry) int { return strings.Compare(a.Key, b.Key) })
	lin := lineage.New(p.linCfg, lineageHooks(p.rule.Load()))
	var bad []string
	for _, e := range entries {
		if err := lin.Load([]lineage.Entry{e}); err != nil {
			p.logger.Error("lineage entry unreadable, dropped", "err", err)
			bad = append(bad, e.Key)
		}
	}
	if _, err := p.store.Commit(state.Change{LineageDelete: bad}); err != nil {
		return nil, fmt.Errorf("load lineage: %w", err)
	}
	return lin, nil
}

// reloadStaleLocked rebuilds the lineage state from the store after a
// commit of lineage entries failed, so that what the failed batch did in
// memory is forgotten and its re-send is taken afresh. p.mu must be held.
func (p *Pipeline) reloadStaleLocked() error {
	if !p.linStale.Load() {
		return nil
	}
	lin, err := p.loadLineage()
	if err != nil {
		return err
	}
	p.linStale.Store(false)
	p.lin = lin
	return nil
}

// lineageAlertLocked does what lineage makes of an alerting token request
// a: its use of the token it authenticated with, if watched (before the
// mint, so that a followed minter's own next mint is attributed to the
// previous one), the chain attributes, and the watch of the token it
// minted (budget-held or not). It returns a's record and whether it is a
// chain; ok is false when a alerts only as a chain (a default exclusion
// overridden) and is not one. p.mu must be held.
func (p *Pipeline) lineageAlertLocked(run *lineageRun, now time.Time, src detect.Source, a alerting) (rec alert.Record, chained, ok bool) {
	run.merge(p.lin.Use(now, src, a.e, nil, false))
	rec = a.rec
	chain, chained := p.lin.Chain(now, a.e)
	if !a.v.Alerts() && !(chained && chain.Alerts(a.v)) {
		return rec, false, false
	}
	if chained {
		chain.Apply(&rec)
	}
	if m, ok := p.lin.MintOf(src, a.e); ok {
		run.merge(p.lin.Mint(now, m))
		rec.Attrs = append(rec.Attrs, m.WatchAttrs()...)
	}
	return rec, chained, true
}

// watchLateLocked watches the token minted by a, a completion that came
// after its request alerted alone from its RequestReceived (a request
// padded to take seconds, say): the minted token's ID is only in the
// completion, and without it lineage could not follow the token. It makes
// no record. p.mu must be held.
func (p *Pipeline) watchLateLocked(run *lineageRun, now time.Time, src detect.Source, a alerting) {
	if chain, chained := p.lin.Chain(now, a.e); !a.v.Alerts() && !(chained && chain.Alerts(a.v)) {
		return
	}
	if m, ok := p.lin.MintOf(src, a.e); ok {
		run.merge(p.lin.Mint(now, m))
	}
}

// bypassesBudget reports whether a lineage record is emitted whatever the
// budget: pipeline records (never silent) and a token_use that reports a
// token's first use.
func bypassesBudget(r *alert.Record) bool {
	if r.EventName == alert.EventPipeline {
		return true
	}
	if r.EventName != lineage.EventTokenUse {
		return false
	}
	v, _ := r.Attr(lineage.AttrNewReasons)
	return slices.Contains(v.Strings, lineage.ReasonFirstUse)
}

// finishLineageLocked adds the run's records to ch, each admitted by the
// budget unless it bypasses it (those held back are counted in the
// window's alerts_suppressed), and the entries lineage changed. p.mu must
// be held.
func (p *Pipeline) finishLineageLocked(ch *state.Change, run *lineageRun, now time.Time) error {
	for i := range run.recs {
		r := &run.recs[i]
		if p.budget != nil && !bypassesBudget(r) {
			user, _ := r.Attr("user.name")
			id, _ := r.Attr("kubernetes.audit.auditID")
			if id.Str == "" {
				id.Str = r.ID
			}
			if !p.budget.AdmitLineage(now, user.Str, id.Str) {
				continue
			}
		}
		ch.Records = append(ch.Records, *r)
		run.names = append(run.names, r.EventName)
	}
	put, del, err := p.lin.Changes()
	if err != nil {
		return err
	}
	ch.LineagePut, ch.LineageDelete = put, del
	run.entries = len(put) > 0 || len(del) > 0
	return nil
}

// tickLineageLocked ends lineage's summary intervals and frees what
// expired, at most every lineageTickInterval (and at the final tick), and
// adds what results, with the entries changed, to ch. p.mu must be held.
func (p *Pipeline) tickLineageLocked(ch *state.Change, run *lineageRun, now time.Time, final bool) error {
	if final || now.Sub(p.lastLineageTick) >= lineageTickInterval || now.Before(p.lastLineageTick) {
		run.merge(p.lin.Tick(now))
		p.lastLineageTick = now
	}
	if err := p.finishLineageLocked(ch, run, now); err != nil {
		p.linStale.Store(true)
		return err
	}
	return nil
}
