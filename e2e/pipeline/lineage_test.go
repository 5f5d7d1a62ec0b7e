package pipeline

import (
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
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", "lineage:\n  enabled: true\n  lookback: 5m\n")
	agg.Start(t)

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

// mkdir makes path's folder and returns path.
func mkdir(t *testing.T, path string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}
