package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/budget"
	"github.com/tokenwatch/tokenwatch/internal/correlate"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/silence"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Defaults of Options.
const (
	DefaultTickInterval  = 100 * time.Millisecond
	DefaultPruneInterval = time.Minute
	// maxDuePerTick bounds the pendings turned into alerts per commit.
	maxDuePerTick = 1000
	// expireInterval is how often Tick lets the correlator drop old events.
	expireInterval = time.Second
	// lineageTickInterval is how often Tick ends lineage's summary
	// intervals and frees what expired.
	lineageTickInterval = time.Second
)

// Options configure a Pipeline.
type Options struct {
	// Store is the durable state; required.
	Store *state.Store
	// Config is the initial configuration file; it must be valid.
	Config config.Config
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger; discarded when nil.
	Logger *slog.Logger
	// Registerer receives the pipeline's metrics; none when nil.
	Registerer prometheus.Registerer
	// TickInterval is how often Run calls Tick; DefaultTickInterval when 0.
	TickInterval time.Duration
	// PruneInterval is how often Run prunes the state; DefaultPruneInterval when 0.
	PruneInterval time.Duration
	// OnWatchChange, when set, is told of the watch changes a Tick made
	// (after its commit): a pending request alerted alone at its deadline
	// that minted a token. Batches return theirs in Result instead.
	OnWatchChange func(add, remove []lineage.Watch)
}

// Loss is one agent loss report.
type Loss struct {
	Reason     string
	File       string
	Offset     uint64
	BytesLost  uint64
	LinesLost  uint64
	BytesKnown bool
	LinesKnown bool
	Observed   time.Time // the agent's clock
	Detail     string
}

// Batch is one acknowledged unit from an agent.
type Batch struct {
	Source detect.Source
	Events []*audit.Event
	// Verdicts, when it has one entry per event, holds the verdict Screen
	// gave each event of Events (all of which it kept), so that Process
	// does not judge them again; otherwise Process judges Events itself.
	Verdicts []rule.Verdict
	// Encoded, when it has one entry per event, holds each event of Events
	// as it arrived: an encoded tokenwatchv1.TokenEvent, or nil when not
	// known. A held event is stored in that form; Process encodes those it
	// lacks.
	Encoded [][]byte
	Losses  []Loss
	// Excluded and NotMatched count events of the batch that Screen
	// dropped before it was built; Process adds them to its Result.
	Excluded, NotMatched int
	// Uses are the requests the agent sent for lineage; Counts count those
	// it matched and did not send one by one.
	Uses   []Use
	Counts []lineage.Count
	// Replay: the batch is a replaying agent's (--once), whose old logs
	// say nothing of what its cluster logs now (silence).
	Replay bool
}

// Result tells what one batch did.
type Result struct {
	Excluded, NotMatched, Held, Alerted, DroppedLate, Ignored, Suppressed int
	// Records is the number of records newly added to the outbox.
	Records int
	// WatchAdd and WatchRemove are the watch changes this batch made: the
	// caller pushes them to every lineage agent before it acknowledges the
	// batch.
	WatchAdd, WatchRemove []lineage.Watch
}

// Pipeline is safe for concurrent use by many streams.
type Pipeline struct {
	store  *state.Store
	now    func() time.Time
	logger *slog.Logger
	m      *metrics
	every  time.Duration // tick interval
	prune  time.Duration

	rule  atomic.Pointer[rule.Rule]
	grace atomic.Int64 // time.Duration

	// Locking. A batch takes its source's (cluster, node) lock, then tick
	// for reading: batches of different agents read, decide and commit
	// concurrently (the store groups their commits into one fsync), while
	// two batches of one agent (a re-send on a new stream racing the old
	// one) never interleave. The agent lock comes first so that batches
	// queued behind one agent do not pin tick. Both stages of a request are
	// logged by the one apiserver that served it, so they come from one
	// agent; should two sources ever carry the same request, the record ID
	// (a digest of the request key) still keeps the outbox to one record.
	// Tick holds tick for writing while it turns due pendings into alerts,
	// so that never races with their completion arriving; with nothing due
	// it does not take it, so batches do not wait for it.
	tick    sync.RWMutex
	agentMu sync.Mutex
	agents  map[detect.Source]*agentLock

	// mu guards the configuration and the fleet components below, which are
	// not safe for concurrent use; it is never held across a batch's commit.
	mu        sync.Mutex
	cfg       config.Config
	corr      *correlate.Correlator
	corrBase  correlate.Stats // of correlators replaced by a reload
	budget    *budget.Budget  // nil when off
	silence   *silence.Tracker
	carry     []alert.Record     // periodic records whose commit failed, retried
	carryBase []silence.Baseline // audit policy baselines whose commit failed, retried
	retention time.Duration
	// lastExpire is when the correlator last dropped old events.
	lastExpire time.Time

	// Lineage: its state (mutated and drained under mu, and its changes
	// submitted under mu so that they commit in mutation order), the
	// configuration read at start, and the agents reported as lacking it.
	lin         *lineage.State
	linCfg      lineage.Config
	unsupported map[unsupportedKey]bool
	runID       string
	// linStale: a commit of lineage entries failed; the state is rebuilt
	// from the store before its next use.
	linStale atomic.Bool
	// lastLineageTick is when Tick last ran lineage's Tick.
	lastLineageTick time.Time
	onWatch         func(add, remove []lineage.Watch)
}

// agentLock serialises one source's batches; refs counts the batches
// holding or waiting for it, so that idle sources are forgotten.
type agentLock struct {
	mu   sync.Mutex
	refs int
}

// lockAgent locks src's batches and returns the unlock.
func (p *Pipeline) lockAgent(src detect.Source) (unlock func()) {
	p.agentMu.Lock()
	l := p.agents[src]
	if l == nil {
		l = &agentLock{}
		p.agents[src] = l
	}
	l.refs++
	p.agentMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		p.agentMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(p.agents, src)
		}
		p.agentMu.Unlock()
	}
}

func New(opts Options) (*Pipeline, error) {
	if opts.Store == nil {
		return nil, errors.New("new pipeline: no state store")
	}
	p := &Pipeline{
		store:  opts.Store,
		now:    opts.Now,
		logger: opts.Logger,
		every:  opts.TickInterval,
		prune:  opts.PruneInterval,
		agents: map[detect.Source]*agentLock{},

		onWatch:     opts.OnWatchChange,
		linCfg:      opts.Config.Lineage,
		unsupported: map[unsupportedKey]bool{},
		runID:       newRunID(),
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.logger == nil {
		p.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if p.every <= 0 {
		p.every = DefaultTickInterval
	}
	if p.prune <= 0 {
		p.prune = DefaultPruneInterval
	}
	p.m = newMetrics(opts.Registerer, p.correlationStats, p.silent)
	if err := p.Apply(opts.Config); err != nil {
		return nil, fmt.Errorf("new pipeline: %w", err)
	}
	if err := p.openLineage(opts.Registerer); err != nil {
		return nil, fmt.Errorf("new pipeline: %w", err)
	}
	if err := p.restoreBaselines(); err != nil {
		return nil, fmt.Errorf("new pipeline: %w", err)
	}
	return p, nil
}

// restoreBaselines gives the silence tracker the audit policy baselines
// stored before a restart.
func (p *Pipeline) restoreBaselines() error {
	bs, unreadable, err := p.store.Baselines()
	if err != nil {
		return err
	}
	if unreadable > 0 {
		p.logger.Warn("audit policy baselines unreadable in the state store: those nodes take their next digest as baseline",
			"count", unreadable)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silence.RestoreBaselines(p.now(), bs)
	if len(bs) > 0 {
		p.logger.Info("audit policy baselines restored", "nodes", len(bs))
	}
	return nil
}

// warnExclusions logs what in the exclusions about to apply may blind
// tokenwatch, at the first configuration and when it changes. p.mu must be
// held.
func (p *Pipeline) warnExclusions(first bool, c rule.Config) {
	if c.ReplaceDefaults && (first || !p.cfg.Exclusions.ReplaceDefaults) {
		p.logger.Warn("exclusions.replace_defaults is true: the seed rule's exclusion list is DROPPED, only exclusions.add applies",
			"added", len(c.Add))
	}
	if w := c.Warnings(); first || !slices.Equal(w, p.cfg.Exclusions.Warnings()) {
		for _, line := range w {
			p.logger.Warn("broad exclusion: " + line)
		}
	}
}

// Apply puts a new configuration in force without a restart. The rule and
// grace apply to the next batch; correlation, budget and silence are rebuilt
// only when their section changed (their windows start afresh then).
func (p *Pipeline) Apply(c config.Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("apply config: %w", err)
	}
	r, err := rule.New(c.Exclusions)
	if err != nil {
		return fmt.Errorf("apply config: exclusions: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	first := p.corr == nil
	p.warnExclusions(first, c.Exclusions)
	if first || !p.cfg.Correlation.Equal(c.Correlation) {
		if p.corr != nil {
			st := p.corr.Stats()
			p.corrBase.Late += st.Late
			p.corrBase.Evicted += st.Evicted
			p.corrBase.Clamped += st.Clamped
		}
		cc := c.Correlation
		cc.IgnoreUsers = append([]string(nil), cc.IgnoreUsers...)
		p.corr = correlate.New(cc)
	}
	if first || p.cfg.Budget != c.Budget {
		if p.budget != nil {
			// Do not lose the summary of a window cut short.
			p.carry = append(p.carry, p.budget.Close(p.now())...)
		}
		p.budget = nil
		if c.Budget.MaxAlerts > 0 {
			p.budget = budget.New(c.Budget)
		}
	}
	if first || !p.cfg.Silence.Equal(c.Silence) {
		sc := c.Silence // the file sets its node bound in limits
		sc.MaxNodesPerCluster = c.Limits.MaxNodesPerCluster
		if first {
			p.silence = silence.New(sc)
		} else {
			// Keep what nodes said (audit policy baselines included).
			p.silence.SetConfig(sc)
		}
	}
	if !first && c.Lineage != p.linCfg {
		p.logger.Warn("config reload: lineage changed; it is read at start and takes effect at the next restart")
	}
	if p.lin != nil {
		p.lin.SetHooks(lineageHooks(r))
	}
	p.rule.Store(r)
	p.grace.Store(int64(c.Alerting.StageGrace))
	p.retention = c.Alerting.DedupeRetention
	p.cfg = c
	return nil
}

// correlationStats returns what the correlators dropped since the start.
func (p *Pipeline) correlationStats() correlate.Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.corrBase
	if p.corr != nil {
		cur := p.corr.Stats()
		st.Late += cur.Late
		st.Evicted += cur.Evicted
		st.Clamped += cur.Clamped
	}
	return st
}

type alerting struct {
	e   *audit.Event
	v   rule.Verdict // when it does not alert, e alerts only as a chain
	rec alert.Record
	// late: e is the completion of a request already alerted alone from
	// its RequestReceived. It makes no record, but the token it minted,
	// named only in the completion, is watched.
	late bool
}

type candidate struct {
	e   *audit.Event
	v   rule.Verdict // when it does not alert, e may be a chain
	key string
	raw []byte // e as it arrived (Batch.Encoded), nil when not known
}

// Process records one batch. When it returns nil, everything the batch
// implies is durably recorded and the batch may be acknowledged; on error
// nothing of it should be acknowledged (a re-send is deduplicated).
func (p *Pipeline) Process(ctx context.Context, b Batch) (Result, error) {
	cands, creates, res := p.candidates(b)
	p.sawTokenRequests(&b, res.Excluded+len(cands))
	if len(cands) == 0 && len(creates) == 0 && len(b.Losses) == 0 && len(b.Uses) == 0 && len(b.Counts) == 0 {
		p.m.count(&res)
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}

	unlock := p.lockAgent(b.Source)
	defer unlock()
	p.tick.RLock()
	defer p.tick.RUnlock()
	now := p.now()
	keys := make([]string, len(cands))
	for i, c := range cands {
		keys[i] = c.key
	}
	var states map[string]detect.State
	if len(keys) > 0 {
		var err error
		states, err = p.store.States(keys)
		if err != nil {
			return Result{}, fmt.Errorf("process batch: %w", err)
		}
	}
	var ch state.Change
	alerts, err := p.decide(&ch, &res, b.Source, cands, states, now)
	if err != nil {
		return Result{}, err
	}
	for _, l := range b.Losses {
		ch.Records = append(ch.Records, LossRecord(b.Source, l, now))
	}
	var run lineageRun
	var wait func() (int, error)
	if len(alerts) > 0 || len(creates) > 0 || len(b.Uses) > 0 || len(b.Counts) > 0 {
		if wait, err = p.submitLocked(&ch, &res, &run, b, alerts, creates, now); err != nil {
			return Result{}, fmt.Errorf("process batch: %w", err)
		}
	} else {
		wait = p.store.Submit(ch)
	}
	added, err := wait()
	if err != nil {
		if run.entries {
			p.linStale.Store(true)
		}
		return Result{}, fmt.Errorf("process batch: %w", err)
	}
	res.Records = added
	res.WatchAdd, res.WatchRemove = run.add, run.remove
	p.m.count(&res)
	p.m.losses.Add(float64(len(b.Losses)))
	p.m.lineageRecords(run.names)
	return res, nil
}

// submitLocked feeds a batch's alerts to correlation, the budget and
// lineage, and its uses and counts to lineage, adds what results to ch and
// submits ch, all under p.mu: lineage entries are committed in the order
// the state changed. It returns the commit's wait. A change that does not
// commit marks the lineage state stale.
func (p *Pipeline) submitLocked(ch *state.Change, res *Result, run *lineageRun, b Batch, alerts []alerting, creates []*audit.Event, now time.Time) (func() (int, error), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.reloadStaleLocked(); err != nil {
		return nil, err
	}
	src := b.Source
	for _, a := range alerts {
		if a.late {
			p.watchLateLocked(run, now, src, a)
			continue
		}
		rec, chained, ok := p.lineageAlertLocked(run, now, src, a)
		if !ok { // not a chain after all: the default exclusion stands
			res.Alerted--
			res.Excluded++
			continue
		}
		if !p.alertLocked(ch, now, src.Cluster, a.e, rec, chained) {
			res.Suppressed++
		}
	}
	for _, e := range creates {
		run.merge(p.lin.Use(now, src, e, nil, false))
	}
	for _, u := range b.Uses {
		run.merge(p.lin.Use(now, src, u.Event, u.Kinds, u.Lookback))
	}
	for _, c := range b.Counts {
		run.merge(p.lin.Count(now, src, c))
	}
	if err := p.finishLineageLocked(ch, run, now); err != nil {
		p.linStale.Store(true)
		return nil, err
	}
	return p.store.Submit(*ch), nil
}

// candidates returns the events of b that alert, or may alert as chains
// (see chainScreen), with their verdicts and keys, the excluded token
// creates that are only lineage uses, and the counts of the others. Events
// come judged by Screen (b.Verdicts); a batch without verdicts is judged
// here.
func (p *Pipeline) candidates(b Batch) ([]candidate, []*audit.Event, Result) {
	res := Result{Excluded: b.Excluded, NotMatched: b.NotMatched}
	r := p.rule.Load()
	judged := b.Verdicts != nil && len(b.Verdicts) == len(b.Events)
	arrived := len(b.Encoded) == len(b.Events)
	chains := chainScreen{p: p}
	defer chains.done()
	var cands []candidate
	var creates []*audit.Event
	for i, e := range b.Events {
		if e == nil {
			res.NotMatched++
			continue
		}
		var v rule.Verdict
		if judged {
			v = b.Verdicts[i]
		} else {
			v = r.Evaluate(e)
		}
		switch {
		case v.Alerts() || chains.maybe(e, v):
			c := candidate{e: e, v: v, key: detect.KeyOf(b.Source, e).String()}
			if arrived {
				c.raw = b.Encoded[i]
			}
			cands = append(cands, c)
			chains.minting(e)
		case v.Excluded:
			res.Excluded++
			if chains.use(e) {
				creates = append(creates, e)
			}
		default:
			res.NotMatched++
		}
	}
	return cands, creates, res
}

// decide turns the lifecycle that detect.Plan decides for the candidates,
// from their stored states, into holds and done marks in ch, counts into
// res and returns the alerts to make.
func (p *Pipeline) decide(ch *state.Change, res *Result, src detect.Source, cands []candidate, states map[string]detect.State, now time.Time) ([]alerting, error) {
	reqs := make([]detect.Request, len(cands))
	for i, c := range cands {
		reqs[i] = detect.Request{Key: c.key, Event: c.e}
	}
	var alerts []alerting
	for i, step := range detect.Plan(states, reqs, now, time.Duration(p.grace.Load())) {
		c := cands[i]
		switch step.Action {
		case detect.ActionHold:
			raw, err := encoded(c)
			if err != nil {
				return nil, fmt.Errorf("process batch: encode pending %s: %w", c.key, err)
			}
			ch.Pending = append(ch.Pending, state.Pending{
				Key: c.key, Deadline: step.Deadline,
				Cluster: src.Cluster, Node: src.Node, Event: raw, Verdict: c.v, Unless: step.Unless,
			})
			res.Held++
		case detect.ActionAlert:
			alerts = append(alerts, alerting{e: c.e, v: c.v, rec: detect.TokenRecord(src, c.e, c.v, false)})
			ch.Done = append(ch.Done, c.key)
			res.Alerted++
		case detect.ActionDropLate:
			alerts = append(alerts, alerting{e: c.e, v: c.v, late: true})
			res.DroppedLate++
		default:
			res.Ignored++
		}
	}
	return alerts, nil
}

// encoded is c's event as it arrived, or encoded once here when that is not
// known (a message decoded by plain protobuf, a batch built in process).
func encoded(c candidate) ([]byte, error) {
	if c.raw != nil {
		return c.raw, nil
	}
	return proto.Marshal(wire.ToProto(c.e))
}

// alertLocked feeds an alerting request to correlation and the budget and
// adds what results to ch. It reports whether rec itself was admitted; a
// chain bypasses the budget. p.mu must be held.
func (p *Pipeline) alertLocked(ch *state.Change, now time.Time, cluster string, e *audit.Event, rec alert.Record, chain bool) bool {
	ev := correlate.Event{Time: rec.Time, Cluster: cluster, User: e.Username(), SourceIP: e.SourceIP(), AuditID: e.AuditID}
	if e.ObjectRef != nil {
		ev.Namespace, ev.Name = e.ObjectRef.Namespace, e.ObjectRef.Name
	}
	if o, ok := rec.Attr("event.outcome"); ok {
		ev.Outcome = o.Str
	}
	ch.Records = append(ch.Records, p.corr.Observe(now, ev)...)
	if p.budget != nil && !chain && !p.budget.Admit(now, ev.User, e.AuditID) {
		return false
	}
	ch.Records = append(ch.Records, rec)
	return true
}

// silent is what silence detection holds silent now.
func (p *Pipeline) silent() map[silence.SilentKey]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.silence == nil { // scraped before New applied the configuration
		return nil
	}
	return p.silence.Silent()
}

// Join admits a (non-replay) agent's node before its stream is welcomed:
// false when its cluster already has limits.max_nodes_per_cluster other
// nodes (the refusal is reported in a nodes_refused record).
func (p *Pipeline) Join(cluster, node string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.silence.Join(p.now(), cluster, node)
}

// Heard records a heartbeat of a (non-replay) agent. lastGrowth is when the
// agent last saw its audit log grow (zero when unknown).
func (p *Pipeline) Heard(cluster, node string, lastGrowth time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silence.Heard(p.now(), cluster, node, lastGrowth)
}

// sawTokenRequests records that b, holding n token requests, is one of a
// live agent's (see silence.Tracker.TokenRequests).
func (p *Pipeline) sawTokenRequests(b *Batch, n int) {
	if b.Replay || n == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silence.TokenRequests(p.now(), b.Source.Cluster)
}

// HeardBeat is Heard with what the heartbeat says of the agent's audit
// log (see silence.Tracker.HeardBeat).
func (p *Pipeline) HeardBeat(cluster, node string, b silence.Beat) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silence.HeardBeat(p.now(), cluster, node, b)
}

// Tick does one round of the periodic work at the clock's now: pendings whose
// grace has passed become event.outcome=unknown alerts, the budget's window
// summaries and silence records are written. It returns the number of
// records added.
func (p *Pipeline) Tick(ctx context.Context) (int, error) {
	return p.tickAt(ctx, false)
}

// tickAt is Tick; final also closes the budget's current window (shutdown),
// so that the summary of alerts it held back is not lost.
func (p *Pipeline) tickAt(ctx context.Context, final bool) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// Look for due pendings without the write lock first: when none are
	// due (the usual case), batches go on while the periodic work runs.
	// A pending that becomes due meanwhile waits for the next tick.
	due, err := p.store.DuePending(p.now(), maxDuePerTick)
	if err != nil {
		return 0, fmt.Errorf("tick: %w", err)
	}
	if len(due) > 0 {
		p.tick.Lock()
		defer p.tick.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if len(due) > 0 {
		// Again under the lock: a completion may have arrived meanwhile.
		if due, err = p.store.DuePending(now, maxDuePerTick); err != nil {
			return 0, fmt.Errorf("tick: %w", err)
		}
	}
	if err := p.reloadStaleLocked(); err != nil {
		return 0, fmt.Errorf("tick: %w", err)
	}
	ch := state.Change{Records: p.carry}
	var run lineageRun
	expired, suppressed := p.expireLocked(&ch, &run, due, now)
	if err := p.tickLineageLocked(&ch, &run, now, final); err != nil {
		return 0, fmt.Errorf("tick: %w", err)
	}
	switch {
	case p.budget != nil && final:
		ch.Records = append(ch.Records, p.budget.Close(now)...)
	case p.budget != nil:
		ch.Records = append(ch.Records, p.budget.Flush(now)...)
	}
	ch.Records = append(ch.Records, p.silence.Check(now)...)
	ch.Baselines = append(p.carryBase, p.silence.Baselines()...)
	if now.Sub(p.lastExpire) >= expireInterval || now.Before(p.lastExpire) {
		p.corr.Expire(now)
		p.lastExpire = now
	}
	if ch.Empty() {
		return 0, nil
	}
	added, err := p.store.Commit(ch)
	if err != nil {
		// Periodic records exist only in memory: keep them for the next try.
		// Due pendings are still in the store and come back by themselves;
		// lineage is rebuilt from the store.
		p.carry = periodic(ch.Records, due)
		p.carryBase = ch.Baselines
		if run.entries {
			p.linStale.Store(true)
		}
		return 0, fmt.Errorf("tick: %w", err)
	}
	p.carry, p.carryBase = nil, nil
	p.logBaselines(ch.Baselines)
	p.m.expired.Add(float64(expired))
	p.m.events.suppressed.Add(float64(suppressed))
	p.m.recordsAdded.Add(float64(added))
	p.m.lineageRecords(run.names)
	if p.onWatch != nil && (len(run.add) > 0 || len(run.remove) > 0) {
		p.onWatch(run.add, run.remove)
	}
	return added, nil
}

// logBaselines logs the audit policy baselines stored: the digest each
// node's file is compared with from now on, across restarts.
func (p *Pipeline) logBaselines(bs []silence.Baseline) {
	for _, b := range bs {
		if !b.Policy.Known() {
			p.logger.Info("audit policy baseline dropped: node forgotten", "cluster", b.Cluster, "node", b.Node)
			continue
		}
		p.logger.Info("audit policy baseline stored", "cluster", b.Cluster, "node", b.Node,
			"sha256", b.Policy.SHA256, "policy_error", b.Policy.Err, "token_requests_unlogged", b.Policy.Gaps)
	}
}

// expireLocked turns the due pendings into the steps detect.Due decides
// for them, each with its verdict (heldVerdict) and judged as a chain by
// lineage now, and adds those to ch: an alert alone (a record, the request
// done alone), or the request done. It returns the number alerted and of
// those the budget suppressed. p.mu must be held.
func (p *Pipeline) expireLocked(ch *state.Change, run *lineageRun, due []state.Pending, now time.Time) (expired, suppressed int) {
	r := p.rule.Load()
	held := make([]detect.Held, len(due))
	for i, pd := range due {
		held[i].Deadline = pd.Deadline
		var pe tokenwatchv1.TokenEvent
		if err := proto.Unmarshal(pd.Event, &pe); err != nil {
			p.logger.Error("pending event unreadable, dropped", "key", pd.Key, "err", err)
			p.m.pendingBroken.Inc()
			continue
		}
		held[i].Event = wire.FromProto(&pe)
		held[i].Verdict = p.chainVerdictLocked(now, held[i].Event, heldVerdict(r, pd.Verdict, held[i].Event))
	}
	for i, step := range detect.Due(held, now) {
		pd, h := due[i], held[i]
		switch step.Mark {
		case detect.StateDone:
			ch.Done = append(ch.Done, pd.Key)
		case detect.StateDoneAlone:
			// Durably alone: its completion, should it come, is dropped as
			// late, after a restart too.
			ch.DoneAlone = append(ch.DoneAlone, pd.Key)
		}
		if step.Action != detect.ActionAlert {
			continue
		}
		src := detect.Source{Cluster: pd.Cluster, Node: pd.Node}
		a := alerting{e: h.Event, v: h.Verdict, rec: detect.TokenRecord(src, h.Event, h.Verdict, true)}
		rec, chained, _ := p.lineageAlertLocked(run, now, src, a) // h.Verdict alerts
		if !p.alertLocked(ch, now, pd.Cluster, h.Event, rec, chained) {
			suppressed++
		}
		expired++
	}
	return expired, suppressed
}

// heldVerdict is the rule's verdict on a held event: the one it was held
// with while the rule in force is the one that gave it, else (the rule was
// reloaded meanwhile, or the entry predates stored verdicts: its verdict
// names rule 0, which no rule has) r's.
func heldVerdict(r *rule.Rule, held rule.Verdict, e *audit.Event) rule.Verdict {
	if held.Rule == r.ID() {
		return held
	}
	return r.Evaluate(e)
}

// periodic keeps the records that are not token-request alerts of due
// pendings (those are rebuilt from the store on the next tick).
func periodic(recs []alert.Record, due []state.Pending) []alert.Record {
	if len(due) == 0 {
		return recs
	}
	var out []alert.Record
	for _, r := range recs {
		if r.EventName != alert.EventTokenRequest {
			out = append(out, r)
		}
	}
	return out
}

// Prune forgets requests and exported records older than the dedupe retention.
func (p *Pipeline) Prune(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	retention := p.retention
	now := p.now()
	p.mu.Unlock()
	if _, err := p.store.Prune(now, retention); err != nil {
		return fmt.Errorf("prune state: %w", err)
	}
	return nil
}

// Run calls Tick and Prune periodically until ctx is done, then ticks once
// more so that what is due is not left behind.
func (p *Pipeline) Run(ctx context.Context) error {
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	prune := time.NewTicker(p.prune)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			if _, err := p.tickAt(context.WithoutCancel(ctx), true); err != nil {
				p.logger.Error("final tick", "err", err)
			}
			return nil
		case <-tick.C:
			if _, err := p.Tick(ctx); err != nil && ctx.Err() == nil {
				p.m.tickErrors.Inc()
				p.logger.Error("pipeline tick", "err", err)
			}
		case <-prune.C:
			if err := p.Prune(ctx); err != nil && ctx.Err() == nil {
				p.logger.Error("pipeline prune", "err", err)
			}
		}
	}
}

// LossRecord is the tokenwatch.pipeline audit_data_lost record of a loss
// report. Its ID depends only on the report, so a re-sent batch does not
// create it twice.
func LossRecord(src detect.Source, l Loss, now time.Time) alert.Record {
	h := sha256.New()
	for _, s := range []string{src.Cluster, src.Node, l.Reason, l.File,
		strconv.FormatUint(l.Offset, 10), strconv.FormatUint(l.BytesLost, 10),
		strconv.FormatUint(l.LinesLost, 10), l.Observed.UTC().Format(time.RFC3339Nano)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	kind, sev := "audit_data_lost", alert.High
	if l.Reason == ReasonLookbackUnavailable {
		kind, sev = KindLookbackLost, alert.Medium
	}
	attrs := []alert.Attr{
		alert.String("tokenwatch.pipeline.kind", kind),
		alert.String("k8s.cluster.name", src.Cluster),
		alert.String("k8s.node.name", src.Node),
		alert.String("tokenwatch.loss.reason", l.Reason),
		alert.String("log.file.name", l.File),
	}
	what := "audit data"
	if l.BytesKnown {
		attrs = append(attrs, alert.Int("tokenwatch.bytes_lost", int64(l.BytesLost)))
		what = fmt.Sprintf("%d bytes of audit data", l.BytesLost)
	}
	if l.LinesKnown {
		attrs = append(attrs, alert.Int("tokenwatch.lines_lost", int64(l.LinesLost)))
		if l.BytesKnown {
			what = fmt.Sprintf("%d bytes (%d lines) of audit data", l.BytesLost, l.LinesLost)
		} else {
			what = fmt.Sprintf("%d lines of audit data", l.LinesLost)
		}
	}
	if l.Detail != "" {
		attrs = append(attrs, alert.String("tokenwatch.loss.detail", l.Detail))
	}
	body := fmt.Sprintf("The tokenwatch agent on node %s of cluster %s lost %s from %s (%s): token requests in it were not checked.",
		src.Node, src.Cluster, what, l.File, l.Reason)
	if kind == KindLookbackLost {
		body = fmt.Sprintf("The tokenwatch agent on node %s of cluster %s could not read %s from %s again for newly watched tokens (%s): their uses in it may be missing; its token requests were checked.",
			src.Node, src.Cluster, what, l.File, l.Reason)
	}
	return alert.Record{
		ID:        "loss-" + hex.EncodeToString(h.Sum(nil)[:16]),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  sev,
		Body:      body,
		Attrs:     attrs,
	}
}

// ReasonLookbackUnavailable is the agent's loss reason for log it read
// before a watch arrived and could not read again to search for it (the
// file was truncated in place, say). That data was checked for token
// requests when first read: only the lineage search of it is lost.
const ReasonLookbackUnavailable = "lineage_lookback_unavailable"

// KindLookbackLost is the pipeline record kind of a ReasonLookbackUnavailable
// loss: medium, not the high audit_data_lost, as no token request went
// unchecked.
const KindLookbackLost = "lineage_lookback_lost"
