package pipeline

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/silence"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var t0 = time.Date(2026, 11, 26, 23, 9, 14, 0, time.UTC)

type fixture struct {
	p     *Pipeline
	store *state.Store
	clk   *clock
}

func newFixture(t *testing.T, cfg config.Config) *fixture {
	t.Helper()
	clk := &clock{t: t0}
	store, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{Now: clk.Now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	p, err := New(Options{Store: store, Config: cfg, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{p: p, store: store, clk: clk}
}

// ev builds a token-create event.
type ev struct {
	user    string
	groups  []string
	stage   string
	id      string
	rrt     string // requestReceivedTimestamp
	code    int32
	ns, sa  string
	sources []string
}

func (e ev) event() *audit.Event {
	out := &audit.Event{
		Level:                    "Request",
		AuditID:                  e.id,
		Stage:                    e.stage,
		Verb:                     "create",
		User:                     &audit.UserInfo{Username: e.user, Groups: e.groups},
		SourceIPs:                e.sources,
		UserAgent:                "kubectl/v1.35.4",
		ObjectRef:                &audit.ObjectReference{Resource: "serviceaccounts", Subresource: "token", Namespace: e.ns, Name: e.sa, APIVersion: "v1"},
		RequestReceivedTimestamp: e.rrt,
		StageTimestamp:           e.rrt,
	}
	if out.ObjectRef.Namespace == "" {
		out.ObjectRef.Namespace = "team-a"
	}
	if out.ObjectRef.Name == "" {
		out.ObjectRef.Name = "builder"
	}
	out.RequestURI = "/api/v1/namespaces/" + out.ObjectRef.Namespace + "/serviceaccounts/" + out.ObjectRef.Name + "/token"
	if len(out.SourceIPs) == 0 {
		out.SourceIPs = []string{"10.0.0.7"}
	}
	if e.stage != audit.StageRequestReceived {
		out.ResponseStatus = &audit.Status{Code: e.code}
	}
	return out
}

func received(user, id, rrt string) ev {
	return ev{user: user, groups: []string{"system:authenticated"}, stage: audit.StageRequestReceived, id: id, rrt: rrt}
}

func completed(user, id, rrt string, code int32) ev {
	return ev{user: user, groups: []string{"system:authenticated"}, stage: audit.StageResponseComplete, id: id, rrt: rrt, code: code}
}

func batch(cluster, node string, evs ...ev) Batch {
	b := Batch{Source: detect.Source{Cluster: cluster, Node: node}}
	for _, e := range evs {
		b.Events = append(b.Events, e.event())
	}
	return b
}

func (f *fixture) process(t *testing.T, b Batch) Result {
	t.Helper()
	res, err := f.p.Process(context.Background(), b)
	if err != nil {
		t.Fatalf("Process: %v", err)
	}
	return res
}

func (f *fixture) tick(t *testing.T) int {
	t.Helper()
	n, err := f.p.Tick(context.Background())
	if err != nil {
		t.Fatalf("Tick: %v", err)
	}
	return n
}

// outbox returns the outbox records, by event name.
func (f *fixture) outbox(t *testing.T) []alert.Record {
	t.Helper()
	recs, err := f.store.Outbox(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		seen := map[string]bool{}
		for _, a := range r.Attrs {
			if seen[a.Key] {
				t.Errorf("%s record: attribute %q twice", r.EventName, a.Key)
			}
			seen[a.Key] = true
		}
	}
	return recs
}

func str(t *testing.T, r alert.Record, key string) string {
	t.Helper()
	v, ok := r.Attr(key)
	if !ok {
		return "<absent>"
	}
	switch v.Kind {
	case alert.KindString:
		return v.Str
	case alert.KindStrings:
		return strings.Join(v.Strings, ",")
	}
	t.Fatalf("attribute %s is %s", key, v.Kind)
	return ""
}

// summary renders token-request records as "auditID outcome" lines, sorted.
func summary(t *testing.T, recs []alert.Record, eventName string) []string {
	var out []string
	for _, r := range recs {
		if r.EventName != eventName {
			continue
		}
		switch eventName {
		case alert.EventTokenRequest:
			out = append(out, str(t, r, "kubernetes.audit.auditID")+" "+str(t, r, "event.outcome"))
		case alert.EventCorrelation:
			out = append(out, str(t, r, "tokenwatch.correlation.kind"))
		case alert.EventPipeline:
			out = append(out, str(t, r, "tokenwatch.pipeline.kind"))
		}
	}
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

const (
	rrt1 = "2026-11-26T23:09:13.821930Z"
	rrt2 = "2026-11-26T23:09:14.000001Z"
)

func TestStagesOneAlertPerRequest(t *testing.T) {
	tests := []struct {
		name    string
		batches [][]ev
		want    []string
	}{
		{"pair in one batch", [][]ev{{received("alice", "a1", rrt1), completed("alice", "a1", rrt1, 201)}}, []string{"a1 success"}},
		{"pair across batches", [][]ev{{received("alice", "a1", rrt1)}, {completed("alice", "a1", rrt1, 201)}}, []string{"a1 success"}},
		{"denied", [][]ev{{received("alice", "a1", rrt1), completed("alice", "a1", rrt1, 403)}}, []string{"a1 failure"}},
		{"completion alone", [][]ev{{completed("alice", "a1", rrt1, 201)}}, []string{"a1 success"}},
		{"re-sent batch", [][]ev{
			{received("alice", "a1", rrt1), completed("alice", "a1", rrt1, 201)},
			{received("alice", "a1", rrt1), completed("alice", "a1", rrt1, 201)},
		}, []string{"a1 success"}},
		{"reused audit ID is another request", [][]ev{
			{received("alice", "a1", rrt1), completed("alice", "a1", rrt1, 201)},
			{received("mallory", "a1", rrt2), completed("mallory", "a1", rrt2, 201)},
		}, []string{"a1 success", "a1 success"}},
		{"excluded system identity", [][]ev{{
			{user: "system:kube-controller-manager", groups: []string{"system:authenticated"}, stage: audit.StageResponseComplete, id: "k1", rrt: rrt1, code: 201},
			{user: "system:node:cp-1", groups: []string{"system:nodes"}, stage: audit.StageResponseComplete, id: "k2", rrt: rrt1, code: 201},
		}}, nil},
		{"forged node name without its group alerts", [][]ev{{
			{user: "system:node:cp-1", groups: []string{"system:authenticated"}, stage: audit.StageResponseComplete, id: "n1", rrt: rrt1, code: 201},
		}}, []string{"n1 success"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, config.Default())
			for _, evs := range tt.batches {
				f.process(t, batch("prod", "cp-1", evs...))
			}
			if got := summary(t, f.outbox(t), alert.EventTokenRequest); !equal(got, tt.want) {
				t.Errorf("records = %q, want %q", got, tt.want)
			}
			// Nothing pending: every request is settled.
			f.clk.Add(time.Hour)
			if n := f.tick(t); n != 0 {
				t.Errorf("Tick after the grace added %d records, want 0", n)
			}
		})
	}
}

func TestStageGrace(t *testing.T) {
	f := newFixture(t, config.Default()) // stage_grace 2s
	res := f.process(t, batch("prod", "cp-1", received("alice", "a1", rrt1)))
	if res.Held != 1 {
		t.Fatalf("Held = %d, want 1", res.Held)
	}
	f.clk.Add(1999 * time.Millisecond)
	if n := f.tick(t); n != 0 {
		t.Fatalf("Tick before the grace added %d records", n)
	}
	f.clk.Add(time.Millisecond)
	if n := f.tick(t); n != 1 {
		t.Fatalf("Tick at the deadline added %d records, want 1", n)
	}
	if got, want := summary(t, f.outbox(t), alert.EventTokenRequest), []string{"a1 unknown"}; !equal(got, want) {
		t.Fatalf("records = %q, want %q", got, want)
	}
	// The completion arrives late: dropped and counted, no second record.
	res = f.process(t, batch("prod", "cp-1", completed("alice", "a1", rrt1, 201)))
	if res.DroppedLate != 1 || res.Records != 0 {
		t.Errorf("late completion: %+v, want DroppedLate 1, Records 0", res)
	}
	if n := len(f.outbox(t)); n != 1 {
		t.Errorf("outbox holds %d records, want 1", n)
	}
}

// TestLateCompletionAfterRestart: the aggregator restarts between the alert
// of a lone RequestReceived and its completion; the completion is still
// dropped as late (not ignored as a duplicate) and makes no record.
func TestLateCompletionAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	clk := &clock{t: t0}
	start := func() (*Pipeline, *state.Store) {
		t.Helper()
		store, err := state.Open(path, state.Options{Now: clk.Now, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(Options{Store: store, Config: config.Default(), Now: clk.Now})
		if err != nil {
			store.Close()
			t.Fatal(err)
		}
		return p, store
	}
	p, store := start()
	f := &fixture{p: p, store: store, clk: clk}
	f.process(t, batch("prod", "cp-1", received("alice", "a1", rrt1), received("bob", "b1", rrt2)))
	f.clk.Add(2 * time.Second) // the default stage_grace
	if n := f.tick(t); n != 2 {
		t.Fatalf("Tick at the deadline added %d records, want 2", n)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	p, store = start()
	defer store.Close()
	f = &fixture{p: p, store: store, clk: clk}
	res := f.process(t, batch("prod", "cp-1", completed("alice", "a1", rrt1, 201)))
	if res.DroppedLate != 1 || res.Ignored != 0 || res.Records != 0 {
		t.Errorf("late completion after restart: %+v, want DroppedLate 1, Ignored 0, Records 0", res)
	}
	// A re-sent RequestReceived of an alerted request is a duplicate, not late.
	res = f.process(t, batch("prod", "cp-1", received("bob", "b1", rrt2)))
	if res.DroppedLate != 0 || res.Ignored != 1 || res.Records != 0 {
		t.Errorf("repeated RequestReceived after restart: %+v, want Ignored 1, Records 0", res)
	}
	if got, want := summary(t, f.outbox(t), alert.EventTokenRequest), []string{"a1 unknown", "b1 unknown"}; !equal(got, want) {
		t.Errorf("records = %q, want %q", got, want)
	}
}

func TestExcludedStoresNothing(t *testing.T) {
	f := newFixture(t, config.Default())
	var evs []ev
	for i := range 100 {
		evs = append(evs, ev{user: "system:kube-controller-manager", stage: audit.StageRequestReceived, id: string(rune('a' + i%26)), rrt: rrt1})
	}
	res := f.process(t, batch("prod", "cp-1", evs...))
	if res.Excluded != 100 || res.Records != 0 || res.Held != 0 {
		t.Errorf("Process = %+v, want 100 excluded and nothing else", res)
	}
	if d := f.store.Depth(); d != 0 {
		t.Errorf("outbox depth = %d, want 0", d)
	}
}

func TestLossReport(t *testing.T) {
	f := newFixture(t, config.Default())
	loss := Loss{Reason: "rotated_file_gone", File: "audit-2026-11-26T23-09-14.292.log", BytesLost: 1048148, BytesKnown: true, Observed: t0}
	b := Batch{Source: detect.Source{Cluster: "prod", Node: "cp-1"}, Losses: []Loss{loss}}
	if res := f.process(t, b); res.Records != 1 {
		t.Fatalf("Records = %d, want 1", res.Records)
	}
	if res := f.process(t, b); res.Records != 0 {
		t.Errorf("re-sent loss report added %d records, want 0", res.Records)
	}
	recs := f.outbox(t)
	if len(recs) != 1 {
		t.Fatalf("outbox = %d records, want 1", len(recs))
	}
	r := recs[0]
	if r.EventName != alert.EventPipeline || r.Severity != alert.High || !r.Time.Equal(t0) {
		t.Errorf("record = %s %v %v, want %s high at %v", r.EventName, r.Severity, r.Time, alert.EventPipeline, t0)
	}
	for k, want := range map[string]string{
		"tokenwatch.pipeline.kind": "audit_data_lost",
		"k8s.cluster.name":         "prod",
		"k8s.node.name":            "cp-1",
		"tokenwatch.loss.reason":   "rotated_file_gone",
		"log.file.name":            "audit-2026-11-26T23-09-14.292.log",
	} {
		if got := str(t, r, k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if v, ok := r.Attr("tokenwatch.bytes_lost"); !ok || v.Int != 1048148 {
		t.Errorf("tokenwatch.bytes_lost = %+v, want 1048148", v)
	}
	if _, ok := r.Attr("tokenwatch.lines_lost"); ok {
		t.Error("tokenwatch.lines_lost present though unknown")
	}
}

func TestApplyExclusion(t *testing.T) {
	f := newFixture(t, config.Default())
	f.process(t, batch("prod", "cp-1", completed("alice", "a1", rrt1, 201)))
	cfg := config.Default()
	cfg.Exclusions.Add = []rule.Pattern{{User: "alice", Namespaces: []string{"team-*"}}}
	if err := f.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	res := f.process(t, batch("prod", "cp-1", completed("alice", "a2", rrt1, 201)))
	if res.Excluded != 1 {
		t.Errorf("after adding an exclusion: %+v, want Excluded 1", res)
	}
	other := completed("alice", "a3", rrt1, 201)
	other.ns = "kube-system"
	if res := f.process(t, batch("prod", "cp-1", other)); res.Alerted != 1 {
		t.Errorf("outside the exclusion's namespaces: %+v, want Alerted 1", res)
	}
	bad := config.Default()
	bad.Correlation.Window = 0
	if err := f.p.Apply(bad); err == nil || !strings.Contains(err.Error(), "correlation.window") {
		t.Errorf("Apply(invalid) = %v, want an error naming correlation.window", err)
	}
	// The invalid config changed nothing.
	if res := f.process(t, batch("prod", "cp-1", completed("alice", "a4", rrt1, 201))); res.Excluded != 1 {
		t.Errorf("after a rejected Apply: %+v, want the exclusion still in force", res)
	}
}

func TestApplyGrace(t *testing.T) {
	f := newFixture(t, config.Default())
	cfg := config.Default()
	cfg.Alerting.StageGrace = 10 * time.Second
	if err := f.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	f.process(t, batch("prod", "cp-1", received("alice", "a1", rrt1)))
	f.clk.Add(5 * time.Second)
	if n := f.tick(t); n != 0 {
		t.Fatalf("Tick within the new 10s grace added %d records", n)
	}
	f.clk.Add(5 * time.Second)
	if n := f.tick(t); n != 1 {
		t.Fatalf("Tick at the new grace added %d records, want 1", n)
	}
}

// TestApplyFleetSections: correlation, budget and silence changes take
// effect without a restart.
func TestApplyFleetSections(t *testing.T) {
	f := newFixture(t, config.Default())
	cfg := config.Default()
	cfg.Correlation.Clusters = 3
	cfg.Budget.MaxAlerts = 1
	cfg.Silence.After = time.Minute
	if err := f.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	// Two clusters no longer correlate (the threshold is now 3)...
	f.process(t, batch("prod", "cp-1", completed("mallory", "x1", rrt1, 201)))
	f.process(t, batch("staging", "cp-1", completed("mallory", "x2", rrt2, 201)))
	if got := summary(t, f.outbox(t), alert.EventCorrelation); len(got) != 0 {
		t.Errorf("correlation with 2 of 3 clusters: %q, want none", got)
	}
	// ...the budget admitted one alert of the two...
	if got := len(summary(t, f.outbox(t), alert.EventTokenRequest)); got != 1 {
		t.Errorf("token_request records = %d, want 1 (max_alerts 1)", got)
	}
	// ...and a node is silent after one minute, not five. (The minute also
	// ends the aligned 5m budget window: its summary comes with it.)
	f.p.Heard("prod", "cp-1", f.clk.Now())
	f.clk.Add(time.Minute)
	f.tick(t)
	if got, want := summary(t, f.outbox(t), alert.EventPipeline), []string{"alerts_suppressed", "cluster_silent"}; !equal(got, want) {
		t.Errorf("pipeline records = %q, want %q", got, want)
	}
}

// TestApplyKeepsNodes: a reload that changes the silence section keeps
// what nodes said: an audit policy edited after it is still compared with
// the digest heard before it.
func TestApplyKeepsNodes(t *testing.T) {
	f := newFixture(t, config.Default())
	beat := func(sum string) {
		f.p.HeardBeat("prod", "cp-1", silence.Beat{LastGrowth: f.clk.Now(), File: silence.FilePresent, Policy: silence.Policy{SHA256: sum}})
	}
	beat("aaaa")
	f.tick(t)
	cfg := config.Default()
	cfg.Silence.After = 10 * time.Minute
	if err := f.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	beat("bbbb")
	f.tick(t)
	if got, want := summary(t, f.outbox(t), alert.EventPipeline), []string{silence.KindAuditPolicyChanged}; !equal(got, want) {
		t.Errorf("pipeline records after a reload = %q, want %q", got, want)
	}
}

// TestBaselinesKeptAcrossRestarts: a node's audit policy baseline is
// stored, so an edit made while the aggregator was down is reported by
// the next one; without it the edited file would be the new baseline.
func TestBaselinesKeptAcrossRestarts(t *testing.T) {
	f := newFixture(t, config.Default())
	beat := func(f *fixture, sum string) {
		f.p.HeardBeat("prod", "cp-1", silence.Beat{LastGrowth: f.clk.Now(), File: silence.FilePresent, Policy: silence.Policy{SHA256: sum}})
	}
	beat(f, "aaaa")
	f.tick(t)
	f = f.reopen(t, config.Default())
	beat(f, "bbbb")
	f.tick(t)
	recs := f.outbox(t)
	if got, want := summary(t, recs, alert.EventPipeline), []string{silence.KindAuditPolicyChanged}; !equal(got, want) {
		t.Fatalf("pipeline records after a restart = %q, want %q", got, want)
	}
	if got := str(t, recs[0], "tokenwatch.audit_policy.previous_sha256"); got != "aaaa" {
		t.Errorf("previous digest %q, want aaaa", got)
	}
}

func TestBudget(t *testing.T) {
	cfg := config.Default()
	cfg.Budget.MaxAlerts = 2
	cfg.Budget.Window = time.Minute
	cfg.Correlation.ServiceAccounts = 100 // keep token_spray out of this test
	f := newFixture(t, cfg)
	var evs []ev
	for _, id := range []string{"b1", "b2", "b3", "b4"} {
		evs = append(evs, completed("alice", id, rrt1, 201))
	}
	res := f.process(t, batch("prod", "cp-1", evs...))
	if res.Alerted != 4 || res.Suppressed != 2 || res.Records != 2 {
		t.Fatalf("Process = %+v, want 4 alerted, 2 suppressed, 2 records", res)
	}
	// Held-back requests are done: a re-send does not alert them later.
	if res := f.process(t, batch("prod", "cp-1", evs...)); res.Records != 0 {
		t.Errorf("re-send added %d records, want 0", res.Records)
	}
	f.clk.Add(time.Minute)
	f.tick(t)
	if got, want := summary(t, f.outbox(t), alert.EventPipeline), []string{"alerts_suppressed"}; !equal(got, want) {
		t.Fatalf("pipeline records = %q, want %q", got, want)
	}
	if got := len(summary(t, f.outbox(t), alert.EventTokenRequest)); got != 2 {
		t.Errorf("token_request records = %d, want 2", got)
	}
	for _, r := range f.outbox(t) {
		if r.EventName != alert.EventPipeline {
			continue
		}
		if v, _ := r.Attr("tokenwatch.suppressed.count"); v.Int != 2 {
			t.Errorf("tokenwatch.suppressed.count = %d, want 2", v.Int)
		}
		if got := str(t, r, "tokenwatch.suppressed.users"); got != "alice=2" {
			t.Errorf("tokenwatch.suppressed.users = %q, want alice=2", got)
		}
		if got := str(t, r, "tokenwatch.suppressed.auditIDs"); got != "b3,b4" {
			t.Errorf("tokenwatch.suppressed.auditIDs = %q, want b3,b4", got)
		}
	}
}

// TestBudgetClosedAtShutdown: the summary of a window cut short by a stop
// is written by Run's last tick.
func TestBudgetClosedAtShutdown(t *testing.T) {
	cfg := config.Default()
	cfg.Budget.MaxAlerts = 1
	f := newFixture(t, cfg)
	f.process(t, batch("prod", "cp-1", completed("alice", "s1", rrt1, 201), completed("alice", "s2", rrt1, 201)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := summary(t, f.outbox(t), alert.EventPipeline), []string{"alerts_suppressed"}; !equal(got, want) {
		t.Errorf("pipeline records after shutdown = %q, want %q", got, want)
	}
}

func TestCorrelation(t *testing.T) {
	f := newFixture(t, config.Default()) // clusters: 2
	f.process(t, batch("prod", "cp-1", completed("mallory", "c1", rrt1, 201)))
	if got := summary(t, f.outbox(t), alert.EventCorrelation); len(got) != 0 {
		t.Fatalf("correlation after one cluster = %q, want none", got)
	}
	f.process(t, batch("staging", "cp-9", completed("mallory", "c2", rrt2, 201)))
	got := summary(t, f.outbox(t), alert.EventCorrelation)
	// mallory in two clusters, from one source IP (10.0.0.7) in two clusters.
	if want := []string{"multi_cluster_actor", "multi_cluster_source"}; !equal(got, want) {
		t.Errorf("correlation records = %q, want %q", got, want)
	}
}

// TestCorrelationOutcome: a correlation that counts a denied request says
// "attempted", not "minted".
func TestCorrelationOutcome(t *testing.T) {
	f := newFixture(t, config.Default()) // clusters: 2
	f.process(t, batch("prod", "cp-1", completed("mallory", "d1", rrt1, 403)))
	f.process(t, batch("staging", "cp-9", completed("mallory", "d2", rrt2, 201)))
	n := 0
	for _, r := range f.outbox(t) {
		if r.EventName != alert.EventCorrelation {
			continue
		}
		n++
		if !strings.Contains(r.Body, " attempted to mint tokens in 2 clusters ") || !strings.Contains(r.Body, "(1 of 2 requests denied)") {
			t.Errorf("%s body = %q, want an attempt with 1 of 2 requests denied", str(t, r, "tokenwatch.correlation.kind"), r.Body)
		}
	}
	if n != 2 {
		t.Errorf("correlation records = %d, want 2", n)
	}
}

func TestSilence(t *testing.T) {
	f := newFixture(t, config.Default()) // after: 5m
	f.p.Heard("prod", "cp-1", t0)
	f.clk.Add(4 * time.Minute)
	f.tick(t)
	if got := summary(t, f.outbox(t), alert.EventPipeline); len(got) != 0 {
		t.Fatalf("pipeline records before silence.after = %q", got)
	}
	f.clk.Add(2 * time.Minute)
	f.tick(t)
	if got, want := summary(t, f.outbox(t), alert.EventPipeline), []string{"cluster_silent"}; !equal(got, want) {
		t.Fatalf("pipeline records = %q, want %q", got, want)
	}
	f.p.Heard("prod", "cp-1", f.clk.Now())
	f.tick(t)
	if got, want := summary(t, f.outbox(t), alert.EventPipeline), []string{"cluster_resumed", "cluster_silent"}; !equal(got, want) {
		t.Fatalf("pipeline records = %q, want %q", got, want)
	}
}

// TestSilencesMetric: tokenwatch_aggregator_silences counts what is
// silent, by cluster and reason, from its cluster_silent to its
// cluster_resumed.
func TestSilencesMetric(t *testing.T) {
	clk := &clock{t: t0}
	store, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{Now: clk.Now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg := config.Default()
	cfg.Silence.ExpectedNodes = map[string]int{"prod": 3}
	reg := prometheus.NewPedanticRegistry()
	p, err := New(Options{Store: store, Config: cfg, Now: clk.Now, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{p: p, store: store, clk: clk}
	const head = "# HELP tokenwatch_aggregator_silences " + `What is silent now, by cluster and tokenwatch.silence.reason: the nodes silent for a node's reason, 1 for a whole cluster's (no_token_requests, nodes_missing); each has had its cluster_silent record and no cluster_resumed since.
# TYPE tokenwatch_aggregator_silences gauge
`
	check := func(want string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenwatch_aggregator_silences"); err != nil {
			t.Error(err)
		}
	}
	f.p.Heard("prod", "cp-1", t0)
	f.p.Heard("prod", "cp-2", t0)
	f.tick(t)
	check("")
	f.clk.Add(6 * time.Minute)
	f.p.Heard("prod", "cp-2", f.clk.Now())
	f.tick(t)
	check(head + `tokenwatch_aggregator_silences{cluster="prod",reason="no_heartbeat"} 1
tokenwatch_aggregator_silences{cluster="prod",reason="nodes_missing"} 1
`)
	f.p.Heard("prod", "cp-1", f.clk.Now())
	f.p.Heard("prod", "cp-3", f.clk.Now())
	f.tick(t)
	check("")
}

// TestSilenceNoTokenRequests: a cluster whose logs grow without a token
// request for silence.token_requests_after is silent; any token request of
// a live agent counts, excluded ones and those the codec screened out
// included, a replaying agent's does not.
func TestSilenceNoTokenRequests(t *testing.T) {
	kubelet := ev{user: "system:node:cp-1", groups: []string{"system:nodes", "system:authenticated"},
		stage: audit.StageResponseComplete, id: "k1", rrt: "2026-11-26T23:00:00Z", code: 201}
	tests := []struct {
		name   string
		batch  Batch
		silent bool
	}{
		{"an excluded token request", batch("prod", "cp-1", kubelet), false},
		{"token requests screened out before the batch", Batch{Source: detect.Source{Cluster: "prod", Node: "cp-1"}, Excluded: 3}, false},
		{"an alerting token request", batch("prod", "cp-1", completed("mallory", "m1", "2026-11-26T23:00:00Z", 201)), false},
		{"a replaying agent's", func() Batch { b := batch("prod", "cp-1", kubelet); b.Replay = true; return b }(), true},
		{"not a token request", Batch{Source: detect.Source{Cluster: "prod", Node: "cp-1"}, NotMatched: 5}, true},
		{"another cluster's", batch("dev", "cp-1", kubelet), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Silence.TokenRequestsAfter = time.Hour
			f := newFixture(t, cfg)
			beat := func() {
				f.p.HeardBeat("prod", "cp-1", silence.Beat{LastGrowth: f.clk.Now(), File: silence.FilePresent})
				f.p.HeardBeat("dev", "cp-1", silence.Beat{LastGrowth: f.clk.Now(), File: silence.FilePresent})
			}
			beat()
			f.clk.Add(40 * time.Minute)
			beat()
			f.process(t, tt.batch)
			f.clk.Add(40 * time.Minute)
			beat()
			f.tick(t)
			var got []string
			for _, r := range f.outbox(t) {
				if r.EventName == alert.EventPipeline && str(t, r, "k8s.cluster.name") == "prod" {
					got = append(got, str(t, r, "tokenwatch.pipeline.kind")+" "+str(t, r, "tokenwatch.silence.reason"))
				}
			}
			var want []string
			if tt.silent {
				want = []string{"cluster_silent no_token_requests"}
			}
			if !equal(got, want) {
				t.Errorf("prod's pipeline records = %q, want %q", got, want)
			}
		})
	}
}

func TestRunStops(t *testing.T) {
	f := newFixture(t, config.Default())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.p.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

func BenchmarkProcessExcluded(b *testing.B) {
	store, err := state.Open(filepath.Join(b.TempDir(), "state.db"), state.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	p, err := New(Options{Store: store, Config: config.Default()})
	if err != nil {
		b.Fatal(err)
	}
	var evs []ev
	for i := range 500 {
		e := ev{user: "system:node:cp-1", groups: []string{"system:nodes"}, stage: audit.StageResponseComplete, id: "n" + string(rune('a'+i%26)), rrt: rrt1, code: 201}
		evs = append(evs, e)
	}
	bt := batch("prod", "cp-1", evs...)
	b.ResetTimer()
	for b.Loop() {
		if _, err := p.Process(context.Background(), bt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
}

// TestConcurrentOneRecordPerRequest runs batches of several clusters (and
// re-sends of the same cluster) concurrently with ticks that expire pendings:
// whatever the interleaving, every request gets exactly one record.
func TestConcurrentOneRecordPerRequest(t *testing.T) {
	cfg := config.Default()
	cfg.Alerting.StageGrace = time.Millisecond
	cfg.Correlation.Clusters = 1000
	cfg.Correlation.ServiceAccounts = 1000
	f := newFixture(t, cfg)
	const senders, requests = 8, 40
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			f.clk.Add(time.Millisecond)
			if _, err := f.p.Tick(context.Background()); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for s := range senders {
		wg.Go(func() {
			// Two senders per cluster send the same requests: a re-send
			// (same node) and, for c2 and c3, the same request arriving
			// from two nodes, which real apiservers never do.
			cluster := []string{"c0", "c1", "c2", "c3"}[s%4]
			node := "cp-1"
			if s%4 >= 2 {
				node = "cp-" + strconv.Itoa(s)
			}
			for i := range requests {
				id := cluster + "-" + strconv.Itoa(i)
				for _, e := range []ev{received("alice", id, rrt1), completed("alice", id, rrt1, 201)} {
					if _, err := f.p.Process(context.Background(), batch(cluster, node, e)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	ticker.Wait()
	f.clk.Add(time.Second)
	f.tick(t)
	seen := map[string]int{}
	for _, r := range f.outbox(t) {
		if r.EventName == alert.EventTokenRequest {
			seen[str(t, r, "k8s.cluster.name")+"/"+str(t, r, "kubernetes.audit.auditID")]++
		}
	}
	if len(seen) != 4*requests {
		t.Errorf("%d requests alerted, want %d", len(seen), 4*requests)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("request %s alerted %d times, want 1", k, n)
		}
	}
}

// TestExclusionWarningsLogged: a configuration whose exclusions may blind
// tokenwatch is logged when it comes into force, once, not at every
// reload that keeps it.
func TestExclusionWarningsLogged(t *testing.T) {
	var logs bytes.Buffer
	cfg := config.Default()
	cfg.Exclusions.Add = []rule.Pattern{{User: "system:serviceaccount:*"}}
	cfg.Exclusions.ReplaceDefaults = true
	store, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	p, err := New(Options{Store: store, Config: cfg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"broad exclusion: exclusions.add[0].user \\\"system:serviceaccount:*\\\" excludes the token requests of every service account", "DROPPED"} {
		if strings.Count(logs.String(), want) != 1 {
			t.Errorf("log %q, want %q once", logs.String(), want)
		}
	}
	before := logs.Len()
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := logs.String()[before:]; got != "" {
		t.Errorf("a reload that keeps them logged %q again", got)
	}
	cfg.Exclusions.Add = []rule.Pattern{{User: "*"}}
	if err := p.Apply(cfg); err == nil || !strings.Contains(err.Error(), "excludes every token request") {
		t.Errorf("Apply of an exclusion of everyone = %v, want it refused", err)
	}
}
