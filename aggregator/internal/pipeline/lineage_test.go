package pipeline

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

var (
	prod    = detect.Source{Cluster: "prod", Node: "cp-1"}
	staging = detect.Source{Cluster: "staging", Node: "cp-9"}
)

const kubeSystemFoo = "system:serviceaccount:kube-system:foo"

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// mintEv is a completed token request by user at t that issued jti,
// authenticated with the token cred ("" for none).
func mintEv(user, jti, cred string, t time.Time) *audit.Event {
	e := completed(user, "mint-"+jti, rfc(t), 201).event()
	if strings.HasPrefix(user, "system:serviceaccount:") {
		ns := strings.Split(user, ":")[2]
		e.User.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	}
	e.Annotations = map[string]string{lineage.AnnotationIssuedCredentialID: "JTI=" + jti}
	if cred != "" {
		e.User.Extra = map[string][]string{lineage.ExtraCredentialID: {"JTI=" + cred}}
	}
	return e
}

var useSeq int

// useEv is a request by user from ip at t made with the token jti ("" for
// none): verb on resource in ns.
func useEv(jti, user, ip string, t time.Time, verb, resource, ns string) *audit.Event {
	useSeq++
	e := &audit.Event{
		AuditID: fmt.Sprintf("use-%d", useSeq), Stage: audit.StageResponseComplete, Verb: verb,
		RequestURI:     "/api/v1/namespaces/" + ns + "/" + resource,
		User:           &audit.UserInfo{Username: user},
		SourceIPs:      []string{ip},
		ObjectRef:      &audit.ObjectReference{Resource: resource, Namespace: ns, APIVersion: "v1"},
		ResponseStatus: &audit.Status{Code: 200}, RequestReceivedTimestamp: rfc(t), StageTimestamp: rfc(t),
	}
	if jti != "" {
		e.User.Extra = map[string][]string{lineage.ExtraCredentialID: {"JTI=" + jti}}
	}
	return e
}

func events(src detect.Source, evs ...*audit.Event) Batch {
	return Batch{Source: src, Events: evs}
}

func uses(src detect.Source, kinds []lineage.Kind, evs ...*audit.Event) Batch {
	b := Batch{Source: src}
	for _, e := range evs {
		b.Uses = append(b.Uses, Use{Event: e, Kinds: kinds})
	}
	return b
}

// lin renders the lineage-relevant records of recs, sorted: event name,
// auditID or key and what the test looks at.
func lin(t *testing.T, recs []alert.Record) []string {
	t.Helper()
	var out []string
	for _, r := range recs {
		var s string
		switch r.EventName {
		case alert.EventTokenRequest:
			s = fmt.Sprintf("token_request %s %s until=%s parent=%s root=%s", str(t, r, "kubernetes.audit.auditID"),
				r.Severity.Text, str(t, r, lineage.AttrWatchUntil), str(t, r, lineage.AttrParentJTI), str(t, r, lineage.AttrRootUser))
		case lineage.EventTokenUse:
			s = fmt.Sprintf("token_use %s jti=%s reasons=%s new=%s", str(t, r, "kubernetes.audit.auditID"),
				str(t, r, "tokenwatch.lineage.jti"), str(t, r, lineage.AttrReasons), str(t, r, lineage.AttrNewReasons))
		case lineage.EventTokenUseSummary, lineage.EventLegacyTokenUse:
			v, _ := r.Attr("tokenwatch.lineage.uses")
			s = fmt.Sprintf("%s jti=%s mint.user=%s user=%s uses=%d", strings.TrimPrefix(r.EventName, "tokenwatch."),
				str(t, r, "tokenwatch.lineage.jti"), str(t, r, "tokenwatch.lineage.mint.user"), str(t, r, "user.name"), v.Int)
		case lineage.EventActorFollowup:
			s = fmt.Sprintf("actor_followup %s action=%s", str(t, r, "kubernetes.audit.auditID"), str(t, r, lineage.AttrAction))
		case alert.EventPipeline:
			s = "pipeline " + str(t, r, "tokenwatch.pipeline.kind")
		default:
			continue
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func watches(ws []lineage.Watch) []string {
	var out []string
	for _, w := range ws {
		out = append(out, string(w.Kind)+"/"+w.Key)
	}
	sort.Strings(out)
	return out
}

func diffLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %q\n want %q", what, got, want)
	}
}

// until is the watch end of a token minted at m without expirationSeconds.
func until(m time.Time) string { return rfc(m.Add(lineage.DefaultConfig().DefaultTokenTTL)) }

// TestLineageMint: an alerting token request puts its token and minter on
// the watch (Result, Watches) and its record says until when; a re-send
// changes nothing.
func TestLineageMint(t *testing.T) {
	f := newFixture(t, config.Default())
	m := t0.Add(-time.Second)
	res := f.process(t, events(prod, mintEv("alice", "jti-1", "", m)))
	diffLines(t, "WatchAdd", watches(res.WatchAdd), []string{"actor_user/alice", "token/jti-1"})
	diffLines(t, "Watches", watches(f.p.Watches()), []string{"actor_user/alice", "token/jti-1"})
	diffLines(t, "records", lin(t, f.outbox(t)), []string{"token_request mint-jti-1 medium until=" + until(m) + " parent=<absent> root=<absent>"})
	if res := f.process(t, events(prod, mintEv("alice", "jti-1", "", m))); len(res.WatchAdd)+len(res.WatchRemove) != 0 || res.Records != 0 {
		t.Errorf("re-send = %+v, want no watch change and no record", res)
	}
	if got := f.p.LineageConfig(); got != config.Default().Lineage {
		t.Errorf("LineageConfig = %+v, want the default", got)
	}
}

// TestLineageUses: uses of a watched token yield token_use records with
// the reasons new to the token, in the order they arrive.
func TestLineageUses(t *testing.T) {
	m := t0.Add(-time.Second)
	steps := []struct {
		name string
		src  detect.Source
		e    *audit.Event
		want string // the token_use record, "" for none
	}{
		{"first use from the mint's IP", prod, useEv("jti-1", "system:serviceaccount:team-a:builder", "10.0.0.7", t0, "get", "configmaps", "team-a"),
			"reasons=first_use new=first_use"},
		{"same again", prod, useEv("jti-1", "system:serviceaccount:team-a:builder", "10.0.0.7", t0, "get", "configmaps", "team-a"), ""},
		{"another IP reading secrets", prod, useEv("jti-1", "system:serviceaccount:team-a:builder", "10.0.0.9", t0, "list", "secrets", "team-a"),
			"reasons=source_ip_differs_from_mint,new_source_ip,sensitive_action new=source_ip_differs_from_mint,new_source_ip,sensitive_action"},
		{"that IP again", prod, useEv("jti-1", "system:serviceaccount:team-a:builder", "10.0.0.9", t0, "get", "configmaps", "team-a"), ""},
		{"another cluster", staging, useEv("jti-1", "system:serviceaccount:team-a:builder", "10.0.0.7", t0, "get", "configmaps", "team-a"),
			"reasons=other_cluster new=other_cluster"},
		{"a token not watched", prod, useEv("jti-2", "bob", "10.0.0.7", t0, "get", "secrets", "team-a"), ""},
	}
	f := newFixture(t, config.Default())
	f.process(t, events(prod, mintEv("alice", "jti-1", "", m)))
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := len(f.outbox(t))
			res := f.process(t, uses(st.src, []lineage.Kind{lineage.KindToken}, st.e))
			recs := f.outbox(t)[before:]
			var got []string
			for _, r := range lin(t, recs) {
				got = append(got, r[strings.Index(r, "reasons="):])
			}
			var want []string
			if st.want != "" {
				want = []string{st.want}
			}
			diffLines(t, "token_use", got, want)
			if res.Records != len(want) {
				t.Errorf("Result.Records = %d, want %d", res.Records, len(want))
			}
		})
	}
}

// TestLineageCountsSummary: counts and uses of a token add up in the
// summary written when its interval ends, by Tick alone.
func TestLineageCountsSummary(t *testing.T) {
	f := newFixture(t, config.Default())
	f.process(t, events(prod, mintEv("alice", "jti-1", "", t0.Add(-time.Second))))
	f.process(t, uses(prod, nil, useEv("jti-1", "builder", "10.0.0.7", t0, "get", "pods", "team-a")))
	b := Batch{Source: prod, Counts: []lineage.Count{{Kind: lineage.KindToken, Key: "jti-1", Uses: 7,
		Verbs: map[string]uint64{"get pods team-a": 7}, SourceIPs: []string{"10.0.0.7"}, First: t0, Last: t0, User: "builder"}}}
	if res := f.process(t, b); res.Records != 0 {
		t.Errorf("counts added %d records at once, want 0", res.Records)
	}
	f.tick(t)
	if got := lin(t, f.outbox(t)); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "token_use_summary") }) {
		t.Fatalf("summary before the interval ended: %q", got)
	}
	f.clk.Add(time.Minute) // past 23:10, the end of the 10-minute interval
	if n := f.tick(t); n != 1 {
		t.Errorf("Tick added %d records, want the summary", n)
	}
	var got []string
	for _, s := range lin(t, f.outbox(t)) {
		if strings.HasPrefix(s, "token_use_summary") {
			got = append(got, s)
		}
	}
	diffLines(t, "summary", got, []string{"token_use_summary jti=jti-1 mint.user=alice user=<absent> uses=8"})
}

// openAt opens a pipeline over the store file at path, closed at the
// test's end; reg may be nil.
func openAt(t *testing.T, path string, cfg config.Config, clk *clock, reg prometheus.Registerer) *fixture {
	t.Helper()
	store, err := state.Open(path, state.Options{Now: clk.Now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	p, err := New(Options{Store: store, Config: cfg, Now: clk.Now, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{p: p, store: store, clk: clk}
}

// reopen closes f's store, as a restart does, and opens a new pipeline
// over it with cfg.
func (f *fixture) reopen(t *testing.T, cfg config.Config) *fixture {
	t.Helper()
	path := f.store.Path()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	return openAt(t, path, cfg, f.clk, nil)
}

func withVerdicts(p *Pipeline, b Batch) Batch {
	for _, e := range b.Events {
		s := rule.SubjectOf(e)
		b.Verdicts = append(b.Verdicts, p.Screen(&s))
	}
	return b
}

// TestLineageChain: a token create made with a watched token alerts with
// its chain even when a default exclusion excludes its user (in the
// batch of the parent's mint too), is a use of the parent and is watched
// in turn; an exclusions.add entry still wins.
func TestLineageChain(t *testing.T) {
	m := t0.Add(-2 * time.Second)
	parent := func() *audit.Event { return mintEv("alice", "jti-1", "", m) }
	child := func() *audit.Event { return mintEv(kubeSystemFoo, "jti-2", "jti-1", m.Add(time.Second)) }
	// In lin's order: sorted.
	chainRec := "token_request mint-jti-2 high until=" + until(m.Add(time.Second)) + " parent=jti-1 root=alice"
	parentRec := "token_request mint-jti-1 medium until=" + until(m) + " parent=<absent> root=<absent>"
	parentUse := "token_use mint-jti-2 jti=jti-1 reasons=first_use,sensitive_action new=first_use,sensitive_action"
	tests := []struct {
		name     string
		add      []rule.Pattern
		together bool // parent and child in one batch
		want     []string
		watch    []string
		alerted  int
		excluded int
	}{
		{"default exclusion overridden", nil, false, []string{parentRec, chainRec, parentUse},
			[]string{"actor_user/alice", "token/jti-1", "token/jti-2"}, 2, 0},
		{"in the parent's batch", nil, true, []string{parentRec, chainRec, parentUse},
			[]string{"actor_user/alice", "token/jti-1", "token/jti-2"}, 2, 0},
		{"explicit exclusion wins", []rule.Pattern{{User: kubeSystemFoo}}, false, []string{parentRec, parentUse},
			[]string{"actor_user/alice", "token/jti-1"}, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Exclusions.Add = tt.add
			f := newFixture(t, cfg)
			var res Result
			if tt.together {
				res = f.process(t, withVerdicts(f.p, events(prod, parent(), child())))
			} else {
				r1 := f.process(t, withVerdicts(f.p, events(prod, parent())))
				res = f.process(t, withVerdicts(f.p, events(prod, child())))
				res.Alerted += r1.Alerted
			}
			diffLines(t, "records", lin(t, f.outbox(t)), tt.want)
			diffLines(t, "Watches", watches(f.p.Watches()), tt.watch)
			if res.Alerted != tt.alerted || res.Excluded != tt.excluded {
				t.Errorf("Result = %+v, want %d alerted, %d excluded", res, tt.alerted, tt.excluded)
			}
		})
	}
}

// TestLineageChainHeld: a chain's RequestReceived held for its completion
// alerts alone as a chain at its deadline.
func TestLineageChainHeld(t *testing.T) {
	f := newFixture(t, config.Default())
	m := t0.Add(-2 * time.Second)
	f.process(t, events(prod, mintEv("alice", "jti-1", "", m)))
	held := mintEv(kubeSystemFoo, "jti-2", "jti-1", m.Add(time.Second))
	held.Stage, held.ResponseStatus, held.Annotations = audit.StageRequestReceived, nil, nil
	if res := f.process(t, events(prod, held)); res.Held != 1 {
		t.Fatalf("Process = %+v, want the chain held", res)
	}
	f.clk.Add(3 * time.Second)
	f.tick(t)
	var got []string
	for _, r := range f.outbox(t) {
		if str(t, r, "kubernetes.audit.auditID") == "mint-jti-2" && r.EventName == alert.EventTokenRequest {
			got = append(got, str(t, r, "event.outcome")+" "+str(t, r, lineage.AttrParentJTI)+" "+r.Severity.Text)
		}
	}
	diffLines(t, "chain alerted alone", got, []string{"unknown jti-1 high"})
}

// TestLineageLateCompletion: a completion that comes after its request
// alerted alone makes no second record, but the token it minted is watched
// (its ID is only in the completion), and its uses are reported; that of a
// request that did not alert is not.
func TestLineageLateCompletion(t *testing.T) {
	for _, c := range []struct {
		user    string
		watched bool
	}{{"alice", true}, {kubeSystemFoo, false}} {
		t.Run(c.user, func(t *testing.T) {
			f := newFixture(t, config.Default())
			m := t0.Add(-time.Second)
			done := mintEv(c.user, "jti-1", "", m)
			held := *done
			held.Stage, held.ResponseStatus, held.Annotations = audit.StageRequestReceived, nil, nil
			if res := f.process(t, events(prod, &held)); res.Held+res.Excluded != 1 {
				t.Fatalf("RequestReceived: %+v", res)
			}
			f.clk.Add(3 * time.Second)
			f.tick(t)
			res := f.process(t, events(prod, done))
			if res.Records != 0 {
				t.Errorf("late completion: %+v, want no record", res)
			}
			var want []string
			if c.watched {
				want = []string{"actor_user/alice", "token/jti-1"}
				if res.DroppedLate != 1 {
					t.Errorf("late completion: %+v, want DroppedLate 1", res)
				}
			}
			diffLines(t, "WatchAdd", watches(res.WatchAdd), want)
			f.process(t, events(prod, mintEv("mallory", "jti-2", "jti-1", m.Add(2*time.Second))))
			var chained []string
			for _, r := range f.outbox(t) {
				if r.EventName == alert.EventTokenRequest && str(t, r, "kubernetes.audit.auditID") == "mint-jti-2" {
					chained = append(chained, str(t, r, lineage.AttrParentJTI))
				}
			}
			wantParent := "<absent>"
			if c.watched {
				wantParent = "jti-1"
			}
			diffLines(t, "a mint with the late completion's token", chained, []string{wantParent})
		})
	}
}

// TestLineageBudget: a budget-held alert still puts its token on the
// watch; its first use and a chain bypass the budget, another token_use
// counts against it.
func TestLineageBudget(t *testing.T) {
	cfg := config.Default()
	cfg.Budget.MaxAlerts, cfg.Budget.Window = 1, time.Minute
	f := newFixture(t, cfg)
	m := t0.Add(-2 * time.Second)
	res := f.process(t, events(prod, mintEv("alice", "jti-1", "", m), mintEv("bob", "jti-2", "", m)))
	if res.Suppressed != 1 {
		t.Fatalf("Process = %+v, want bob's alert held back", res)
	}
	diffLines(t, "WatchAdd", watches(res.WatchAdd), []string{"actor_user/alice", "actor_user/bob", "token/jti-1", "token/jti-2"})
	first := useEv("jti-2", "builder", "10.0.0.7", t0, "get", "pods", "team-a")
	again := useEv("jti-2", "builder", "10.0.0.10", t0, "get", "pods", "team-a")
	f.process(t, uses(prod, nil, first, again))
	f.process(t, events(prod, mintEv(kubeSystemFoo, "jti-3", "jti-2", t0)))
	diffLines(t, "records", lin(t, f.outbox(t)), []string{
		"token_request mint-jti-1 medium until=" + until(m) + " parent=<absent> root=<absent>",
		"token_request mint-jti-3 high until=" + until(t0) + " parent=jti-2 root=bob",
		"token_use " + first.AuditID + " jti=jti-2 reasons=first_use new=first_use",
	})
	f.clk.Add(time.Minute)
	f.tick(t)
	for _, r := range f.outbox(t) {
		if k := str(t, r, "tokenwatch.pipeline.kind"); k == "alerts_suppressed" {
			if v, _ := r.Attr("tokenwatch.suppressed.count"); v.Int != 3 { // bob's alert, the use again, jti-3's token_use of jti-2
				t.Errorf("tokenwatch.suppressed.count = %d, want 3", v.Int)
			}
		}
	}
}

// TestLineageActor: a minter's sensitive action within actor_window is an
// actor_followup, once per (action, target); a system:* minter an
// exclusion names is not followed.
func TestLineageActor(t *testing.T) {
	cfg := config.Default()
	f := newFixture(t, cfg)
	m := t0.Add(-time.Second)
	node := mintEv("system:node:cp-1", "jti-n", "", m) // no system:nodes group: strict_groups alerts
	res := f.process(t, events(prod, mintEv("alice", "jti-1", "", m), node))
	diffLines(t, "WatchAdd", watches(res.WatchAdd), []string{"actor_user/alice", "token/jti-1", "token/jti-n"})
	read := useEv("", "alice", "10.0.0.7", t0, "get", "secrets", "kube-system")
	f.process(t, uses(prod, []lineage.Kind{lineage.KindActorUser}, read,
		useEv("", "alice", "10.0.0.7", t0, "get", "secrets", "kube-system")))
	diffLines(t, "records", lin(t, f.outbox(t))[:1], []string{"actor_followup " + read.AuditID + " action=secrets_read"})
	// alice's next mint is a token_mint she did in her window.
	f.process(t, events(prod, mintEv("alice", "jti-3", "", t0)))
	var got []string
	for _, s := range lin(t, f.outbox(t)) {
		if strings.HasPrefix(s, "actor_followup") {
			got = append(got, s)
		}
	}
	diffLines(t, "followups", got, []string{"actor_followup mint-jti-3 action=token_mint", "actor_followup " + read.AuditID + " action=secrets_read"})
}

// TestLineageLegacy: legacy-token uses and counts add up in one record per
// service account at the interval's end; an exclusions.add entry silences
// a service account.
func TestLineageLegacy(t *testing.T) {
	cfg := config.Default()
	cfg.Exclusions.Add = []rule.Pattern{{User: "system:serviceaccount:ci:quiet"}}
	f := newFixture(t, cfg)
	legacy := func(sa string) *audit.Event {
		e := useEv("", sa, "10.0.0.5", t0, "list", "secrets", "ci")
		e.Annotations = map[string]string{lineage.AnnotationLegacyToken: sa}
		return e
	}
	kinds := []lineage.Kind{lineage.KindLegacy}
	f.process(t, uses(prod, kinds, legacy("system:serviceaccount:ci:deployer"), legacy("system:serviceaccount:ci:quiet")))
	f.process(t, Batch{Source: prod, Counts: []lineage.Count{
		{Kind: lineage.KindLegacy, Key: "system:serviceaccount:ci:deployer", Uses: 4, Codes: map[string]uint64{"401": 4}, First: t0, Last: t0},
		{Kind: lineage.KindLegacy, Key: "system:serviceaccount:ci:quiet", Uses: 4, First: t0, Last: t0},
	}})
	f.clk.Add(time.Minute)
	f.tick(t)
	diffLines(t, "records", lin(t, f.outbox(t)), []string{"legacy_token_use jti=<absent> mint.user=<absent> user=system:serviceaccount:ci:deployer uses=5"})
}

// scenario is a run of batches and ticks over one store; restart, when
// set, closes and reopens the store before step i.
func scenario(t *testing.T, restartAt int) []alert.Record {
	t.Helper()
	useSeq = 0 // the same request IDs in every run
	clk := &clock{t: t0}
	cfg := config.Default()
	f := openAt(t, filepath.Join(t.TempDir(), "state.db"), cfg, clk, nil)
	m := t0.Add(-time.Second)
	steps := []func(){
		func() { f.process(t, events(prod, mintEv("alice", "jti-1", "", m))) },
		func() {
			f.process(t, uses(prod, nil, useEv("jti-1", "b", "10.0.0.7", t0, "get", "pods", "team-a"),
				useEv("", "alice", "10.0.0.7", t0, "get", "secrets", "team-a")))
		},
		func() {
			f.process(t, Batch{Source: prod, Counts: []lineage.Count{{Kind: lineage.KindToken, Key: "jti-1", Uses: 3, First: t0, Last: t0}}})
		},
		func() { f.tick(t) },
		func() {
			f.process(t, uses(prod, nil, useEv("jti-1", "b", "10.0.0.7", t0, "get", "pods", "team-a"),
				useEv("jti-1", "b", "10.0.0.8", t0, "get", "pods", "team-a"), useEv("", "alice", "10.0.0.7", t0, "get", "secrets", "team-a")))
		},
		func() { clk.Add(time.Minute); f.tick(t) },
		func() { f.process(t, events(staging, mintEv(kubeSystemFoo, "jti-2", "jti-1", clk.Now()))) },
		func() { clk.Add(2 * time.Hour); f.tick(t) },
	}
	for i, step := range steps {
		if i == restartAt {
			f = f.reopen(t, cfg)
		}
		step()
	}
	if restartAt >= 0 {
		if got := watches(f.p.Watches()); len(got) != 0 {
			t.Errorf("Watches after every TTL = %q, want none", got)
		}
	}
	return f.outbox(t)
}

// TestLineageRestart: closing and reopening the store anywhere in a
// scenario gives the same records as a run without restart.
func TestLineageRestart(t *testing.T) {
	want := lin(t, scenario(t, -1))
	if len(want) < 6 {
		t.Fatalf("scenario records = %q, want mints, uses, a follow-up, a summary and a chain", want)
	}
	for i := 1; i < 8; i++ {
		t.Run(fmt.Sprintf("restart before step %d", i), func(t *testing.T) {
			diffLines(t, "records", lin(t, scenario(t, i)), want)
		})
	}
}

// TestLineageDisabled: lineage off makes no watch, record or chain; the
// entries stored before are kept until they expire.
func TestLineageDisabled(t *testing.T) {
	f := newFixture(t, config.Default())
	m := t0.Add(-time.Second)
	f.process(t, events(prod, mintEv("alice", "jti-1", "", m)))
	off := config.Default()
	off.Lineage.Enabled = false
	f = f.reopen(t, off)
	if got := f.p.Watches(); len(got) != 0 {
		t.Errorf("Watches = %v, want none", got)
	}
	before := len(f.outbox(t))
	res := f.process(t, events(prod, mintEv("bob", "jti-2", "", m), mintEv(kubeSystemFoo, "jti-3", "jti-1", t0)))
	res2 := f.process(t, uses(prod, nil, useEv("jti-1", "b", "10.0.0.9", t0, "get", "secrets", "team-a")))
	if len(res.WatchAdd) != 0 || res.Excluded != 1 || res2.Records != 0 {
		t.Errorf("Process = %+v then %+v, want no watch, the chain excluded, no token_use", res, res2)
	}
	for _, r := range f.outbox(t)[before:] {
		if _, ok := r.Attr(lineage.AttrWatchUntil); ok || r.EventName != alert.EventTokenRequest {
			t.Errorf("record %s with lineage: %s", r.EventName, r.ID)
		}
	}
	entries, _, _ := f.store.LineageEntries()
	if len(entries) == 0 {
		t.Fatal("stored entries dropped when lineage is off")
	}
	f.clk.Add(2 * time.Hour)
	f.tick(t)
	if entries, _, _ := f.store.LineageEntries(); len(entries) != 0 {
		t.Errorf("entries after expiry = %d, want none", len(entries))
	}
}

func gathered(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("metric %s %v not found", name, labels)
	return 0
}

// TestLineageUnsupportedAndMetrics: an agent without lineage is reported
// once per (cluster, node, version) per run; the metrics count watches,
// records and such agents.
func TestLineageUnsupportedAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	clk := &clock{t: t0}
	f := openAt(t, filepath.Join(t.TempDir(), "state.db"), config.Default(), clk, reg)
	ctx := context.Background()
	for _, v := range []string{"v1.2.0", "v1.2.0", "v1.1.0"} {
		if err := f.p.LineageUnsupported(ctx, prod, v); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, r := range f.outbox(t) {
		if str(t, r, "tokenwatch.pipeline.kind") == KindLineageUnsupported {
			got = append(got, str(t, r, "k8s.cluster.name")+" "+str(t, r, "k8s.node.name")+" "+str(t, r, "tokenwatch.agent.version"))
		}
	}
	sort.Strings(got)
	diffLines(t, "lineage_unsupported_agent records", got, []string{"prod cp-1 v1.1.0", "prod cp-1 v1.2.0"})
	f.process(t, events(prod, mintEv("alice", "jti-1", "", t0)))
	f.process(t, uses(prod, nil, useEv("jti-1", "b", "10.0.0.7", t0, "get", "pods", "team-a")))
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokenwatch_aggregator_lineage_unsupported_agents", nil, 2},
		{"tokenwatch_aggregator_lineage_watched", nil, 1},
		{"tokenwatch_aggregator_lineage_records_total", []string{"event_name", lineage.EventTokenUse}, 1},
		{"tokenwatch_aggregator_lineage_records_total", []string{"event_name", alert.EventPipeline}, 2},
		{"tokenwatch_aggregator_lineage_records_total", []string{"event_name", lineage.EventActorFollowup}, 0},
	} {
		if got := gathered(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// TestLineageReadAtStart: a reload that changes the lineage section keeps
// the one in force; one that adds an exclusion re-sets lineage's hooks.
func TestLineageReadAtStart(t *testing.T) {
	f := newFixture(t, config.Default())
	cfg := config.Default()
	cfg.Lineage.Enabled = false
	cfg.Exclusions.Add = []rule.Pattern{{User: "system:serviceaccount:ci:quiet"}}
	if err := f.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := f.p.LineageConfig(); !got.Enabled {
		t.Errorf("LineageConfig after reload = %+v, want the one read at start", got)
	}
	legacy := useEv("", "system:serviceaccount:ci:quiet", "10.0.0.5", t0, "list", "secrets", "ci")
	legacy.Annotations = map[string]string{lineage.AnnotationLegacyToken: "system:serviceaccount:ci:quiet"}
	f.process(t, uses(prod, nil, legacy))
	f.clk.Add(time.Minute)
	f.tick(t)
	if got := lin(t, f.outbox(t)); len(got) != 0 {
		t.Errorf("records = %q, want none: the reloaded exclusion silences the service account", got)
	}
}
