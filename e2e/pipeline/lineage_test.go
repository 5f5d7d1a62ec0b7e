package pipeline

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"

	"github.com/tokenwatch/tokenwatch/e2e/internal/auditwrite"
	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

const eventTokenUse = "tokenwatch.token_use"

// TestReplayLineageWatchedElsewhere replays, with agent --once, the log of
// a node where a token minted on another node was used, and nothing was
// minted: the aggregator already watches the token, and the replay finds
// the use through the watch set it receives when its stream starts. The
// replay reads its small log long before that set arrives; it must not
// end before the set's search is done.
func TestReplayLineageWatchedElsewhere(t *testing.T) {
	b, logs, dir, sink, agg := startLineage(t, "")

	now := time.Now().UTC()
	mintID, jti, useID := auditwrite.NewID(), auditwrite.NewID(), auditwrite.NewID()
	alice := authnv1.UserInfo{Username: "alice", Groups: []string{"system:authenticated"}}
	mintLog, useLog := filepath.Join(dir, "cp-1", "audit.log"), filepath.Join(dir, "cp-2", "audit.log")
	for _, w := range []struct {
		path string
		err  error
	}{
		{mintLog, auditwrite.Append(mkdir(t, mintLog), auditwrite.Mint(mintID, jti, now, alice, "team-a", "deployer")...)},
		{useLog, auditwrite.Append(mkdir(t, useLog), auditwrite.Use(useID, jti, now.Add(time.Second), "10.0.0.50", "list", "secrets", "team-a", "deployer"))},
	} {
		if w.err != nil {
			t.Fatalf("write %s: %v", w.path, w.err)
		}
	}

	minter := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: mintLog, Aggregator: agg.Listen}
	minter.RunOnce(t, 2*time.Minute)
	if !sink.WaitFor(time.Minute, func(recs []harness.Record) bool {
		for _, r := range harness.ByEvent(recs, harness.EventTokenRequest) {
			if r.Str("kubernetes.audit.auditID") == mintID {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("alice's mint %s was not exported within a minute", mintID)
	}

	user := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-2", AuditLog: useLog, Aggregator: agg.Listen}
	user.RunOnce(t, 2*time.Minute)
	found := func(recs []harness.Record) bool {
		for _, r := range harness.ByEvent(recs, eventTokenUse) {
			if r.Str("kubernetes.audit.auditID") == useID && r.Str("tokenwatch.lineage.jti") == jti {
				return true
			}
		}
		return false
	}
	if !sink.WaitFor(time.Minute, found) {
		user.Proc.Dump(t)
		t.Fatalf("the replay of cp-2 exported no token_use for %s (token %s) within a minute", useID, jti)
	}
}

// TestLateCompletionWatched: a token request whose completion comes after
// alerting.stage_grace (a request padded to take seconds at the apiserver)
// alerts alone from its RequestReceived; its late completion makes no
// second record, but the token it minted, named only there, is watched:
// its use is reported. Without that, padding a request would keep its
// token out of lineage.
func TestLateCompletionWatched(t *testing.T) {
	b, logs, dir, sink, agg := startLineage(t, "")
	now := time.Now().UTC()
	mintID, jti, useID := auditwrite.NewID(), auditwrite.NewID(), auditwrite.NewID()
	alice := authnv1.UserInfo{Username: "alice", Groups: []string{"system:authenticated"}}
	stages := auditwrite.Mint(mintID, jti, now, alice, "team-a", "deployer")
	path := mkdir(t, filepath.Join(dir, "cp-1", "audit.log"))
	if err := auditwrite.Append(path, stages[0]); err != nil {
		t.Fatal(err)
	}
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: path,
		Aggregator: agg.Listen, StateDir: filepath.Join(dir, "agent-state"), StartAt: "beginning"}
	agent.Start(t)
	mints := func(recs []harness.Record) []harness.Record {
		var out []harness.Record
		for _, r := range harness.ByEvent(recs, harness.EventTokenRequest) {
			if r.Str("kubernetes.audit.auditID") == mintID {
				out = append(out, r)
			}
		}
		return out
	}
	if !sink.WaitFor(time.Minute, func(recs []harness.Record) bool { return len(mints(recs)) > 0 }) {
		t.Fatal("the RequestReceived did not alert alone within a minute")
	}
	if err := auditwrite.Append(path, stages[len(stages)-1], auditwrite.Use(useID, jti, now.Add(time.Second), "10.0.0.50", "list", "secrets", "team-a", "deployer")); err != nil {
		t.Fatal(err)
	}
	used := func(recs []harness.Record) bool {
		for _, r := range harness.ByEvent(recs, eventTokenUse) {
			if r.Str("kubernetes.audit.auditID") == useID && r.Str("tokenwatch.lineage.jti") == jti {
				return true
			}
		}
		return false
	}
	if !sink.WaitFor(time.Minute, used) {
		agg.Proc.Dump(t)
		t.Fatalf("no token_use for %s (token %s, minted by the late completion) within a minute", useID, jti)
	}
	sink.Quiet(2*time.Second, 30*time.Second)
	if got := mints(sink.Records()); len(got) != 1 || got[0].Str("event.outcome") != "unknown" {
		t.Errorf("%d token_request records for the mint, want one with outcome unknown", len(got))
	}
}

// TestLineageWatchEnds: a token is watched for its lifetime from its mint
// (here lineage.default_token_ttl, 10m, as the TokenRequest logs no
// expirationSeconds), by the time the requests were logged: a use logged
// within it is reported, one logged after it is not, though both are read
// at once.
func TestLineageWatchEnds(t *testing.T) {
	b, logs, dir, sink, agg := startLineage(t, "  default_token_ttl: 10m\n")
	now := time.Now().UTC()
	mintID, jti, inID, outID := auditwrite.NewID(), auditwrite.NewID(), auditwrite.NewID(), auditwrite.NewID()
	alice := authnv1.UserInfo{Username: "alice", Groups: []string{"system:authenticated"}}
	mint := now.Add(-30 * time.Minute)
	evs := auditwrite.Mint(mintID, jti, mint, alice, "team-a", "deployer")
	evs = append(evs,
		// From another address: were it a use, it would be reported.
		auditwrite.Use(outID, jti, mint.Add(10*time.Minute+time.Second), "10.0.0.66", "list", "secrets", "team-a", "deployer"),
		auditwrite.Use(inID, jti, mint.Add(10*time.Minute), "10.0.0.50", "get", "secrets", "team-a", "deployer"))
	path := mkdir(t, filepath.Join(dir, "cp-1", "audit.log"))
	if err := auditwrite.Append(path, evs...); err != nil {
		t.Fatal(err)
	}
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: path,
		Aggregator: agg.Listen, StateDir: filepath.Join(dir, "agent-state"), StartAt: "beginning"}
	agent.Start(t)
	usesOf := func(recs []harness.Record) map[string]int {
		n := map[string]int{}
		for _, r := range harness.ByEvent(recs, eventTokenUse) {
			if r.Str("tokenwatch.lineage.jti") == jti {
				n[r.Str("kubernetes.audit.auditID")]++
			}
		}
		return n
	}
	if !sink.WaitFor(time.Minute, func(recs []harness.Record) bool { return usesOf(recs)[inID] > 0 }) {
		agg.Proc.Dump(t)
		t.Fatal("the use logged at the end of the token's lifetime was not reported within a minute")
	}
	sink.Quiet(2*time.Second, 30*time.Second)
	if got := usesOf(sink.Records()); got[inID] != 1 || got[outID] != 0 {
		t.Errorf("token_use records: %d for the use at the watch's end, %d for the one a second after; want 1 and 0", got[inID], got[outID])
	}
}

// startLineage starts a sink and an aggregator with lineage on, its
// lineage section extended by more (YAML lines indented by two), and
// returns them with the binaries, the log folder and a work folder.
func startLineage(t *testing.T, more string) (*harness.Binaries, string, string, *harness.Sink, *harness.Aggregator) {
	t.Helper()
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", "lineage:\n  enabled: true\n  lookback: 5m\n"+more)
	agg.Start(t)
	return b, logs, dir, sink, agg
}

// mkdir makes path's folder and returns path.
func mkdir(t *testing.T, path string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLineageWatchFull: with lineage.max_watched 2, mallory mints three
// tokens and alice one, then each of M1, M3 and A1 is used. Mallory's
// oldest watches make room (one minter cannot evict another's), a
// lineage_watch_full record names the two dropped, the uses of M3 and A1
// are reported, and M1's is not.
func TestLineageWatchFull(t *testing.T) {
	b, logs, dir, sink, agg := startLineage(t, "  max_watched: 2\n  summary_interval: 2s\n")

	now := time.Now().UTC()
	mallory := authnv1.UserInfo{Username: "mallory", Groups: []string{"system:authenticated"}}
	alice := authnv1.UserInfo{Username: "alice", Groups: []string{"system:authenticated"}}
	type token struct {
		name, jti, use string
		by             authnv1.UserInfo
		ns, sa         string
	}
	tokens := []token{
		{name: "M1", by: mallory, ns: "team-b", sa: "app-1"},
		{name: "M2", by: mallory, ns: "team-b", sa: "app-2"},
		{name: "M3", by: mallory, ns: "team-b", sa: "app-3"},
		{name: "A1", by: alice, ns: "team-a", sa: "deployer"},
	}
	log := filepath.Join(dir, "audit.log")
	at := now
	for i := range tokens {
		tk := &tokens[i]
		tk.jti, tk.use = auditwrite.NewID(), auditwrite.NewID()
		if err := auditwrite.Append(log, auditwrite.Mint(auditwrite.NewID(), tk.jti, at, tk.by, tk.ns, tk.sa)...); err != nil {
			t.Fatal(err)
		}
		at = at.Add(time.Second)
	}
	for _, i := range []int{0, 2, 3} { // M1, M3, A1
		tk := tokens[i]
		if err := auditwrite.Append(log, auditwrite.Use(tk.use, tk.jti, at, "10.0.0.50", "list", "secrets", tk.ns, tk.sa)); err != nil {
			t.Fatal(err)
		}
		at = at.Add(time.Second)
	}

	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: log, Aggregator: agg.Listen}
	agent.RunOnce(t, 2*time.Minute)
	usesOf := func(recs []harness.Record) map[string]int {
		n := map[string]int{}
		for _, r := range harness.ByEvent(recs, eventTokenUse) {
			for _, tk := range tokens {
				if r.Str("tokenwatch.lineage.jti") == tk.jti && r.Str("kubernetes.audit.auditID") == tk.use {
					n[tk.name]++
				}
			}
		}
		return n
	}
	full := func(recs []harness.Record) []harness.Record { return harness.ByKind(recs, "lineage_watch_full") }
	if !sink.WaitFor(time.Minute, func(recs []harness.Record) bool {
		n := usesOf(recs)
		return n["M3"] == 1 && n["A1"] == 1 && len(full(recs)) > 0
	}) {
		t.Fatalf("within a minute: token_use %v (want M3 and A1), %d lineage_watch_full records (want 1)", usesOf(sink.Records()), len(full(sink.Records())))
	}
	sink.Quiet(3*time.Second, 20*time.Second)
	recs := sink.Records()
	if n := usesOf(recs); n["M1"] != 0 || n["M2"] != 0 {
		t.Errorf("token_use of dropped watches: %v, want none for M1 and M2", n)
	}
	f := full(recs)
	if len(f) != 1 {
		t.Fatalf("%d lineage_watch_full records, want 1", len(f))
	}
	got := fmt.Sprint(f[0].Attrs["tokenwatch.lineage.dropped"], " ", f[0].Attrs["tokenwatch.lineage.max_watched"], " ", f[0].Attrs["tokenwatch.lineage.dropped_minters"])
	if want := "2 2 [mallory=2]"; got != want {
		t.Errorf("lineage_watch_full: dropped, max_watched, dropped_minters = %s, want %s", got, want)
	}
	if requests := harness.ByEvent(recs, harness.EventTokenRequest); len(requests) != len(tokens) {
		t.Errorf("%d token_request records, want %d (a dropped watch does not drop its alert)", len(requests), len(tokens))
	}
}
