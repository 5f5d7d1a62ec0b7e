package hostile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/auditwrite"
	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// TestUnloggedTokenRequestsReported: an audit policy that stops logging
// token requests (tampered with to hide mints, or misconfigured) leaves
// tokenwatch reading a growing log with nothing to find. The aggregator
// reports the cluster cluster_silent with reason no_token_requests once
// silence.token_requests_after passes, and cluster_resumed when a token
// request (here a kubelet's, excluded: no alert) is logged again.
func TestUnloggedTokenRequestsReported(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit", "audit.log")
	if err := os.MkdirAll(filepath.Dir(auditLog), 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(events, systemEvery int) {
		t.Helper()
		if _, err := auditwrite.Run(context.Background(), auditwrite.Config{Path: auditLog, Mode: auditwrite.Lumberjack,
			MaxSizeMB: 1024, Events: events, SystemEvery: systemEvery, Cluster: "prod"}); err != nil {
			t.Fatalf("write the audit log: %v", err)
		}
	}
	write(200, 0) // routine requests only: the policy logs no token request

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	// silence.after is far longer than the test, so that the node itself is
	// never silent: only the missing token requests are.
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", "silence:\n  after: 10m\n  token_requests_after: 3s\n")
	agg.Start(t)
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "prod", Node: "cp-1", AuditLog: auditLog,
		Aggregator: agg.Listen, StartAt: "beginning"}
	agent.Start(t)

	silence := func(recs []harness.Record) []string {
		var out []string
		for _, r := range harness.ByEvent(recs, "tokenwatch.pipeline") {
			if r.Str("tokenwatch.silence.reason") == "no_token_requests" {
				out = append(out, r.Str("tokenwatch.pipeline.kind"))
			}
		}
		return out
	}
	const bound = 60 * time.Second // failure bounds, not measurements
	if !sink.WaitFor(bound, func(r []harness.Record) bool { return len(silence(r)) > 0 }) {
		agg.Proc.Dump(t)
		t.Fatalf("no cluster_silent (no_token_requests) within %v of a log without token requests", bound)
	}
	var silent harness.Record
	for _, r := range harness.ByEvent(sink.Records(), "tokenwatch.pipeline") {
		if r.Str("tokenwatch.silence.reason") == "no_token_requests" {
			silent = r
			break
		}
	}
	if k := silent.Str("tokenwatch.pipeline.kind"); k != "cluster_silent" {
		t.Errorf("first no_token_requests record is %s, want cluster_silent", k)
	}
	if silent.Str("k8s.cluster.name") != "prod" || silent.Str("k8s.node.name") != "" {
		t.Errorf("record for cluster %q node %q, want cluster prod and no node", silent.Str("k8s.cluster.name"), silent.Str("k8s.node.name"))
	}
	if !strings.Contains(silent.Body, "audit policy") {
		t.Errorf("body %q does not name the likely cause", silent.Body)
	}

	// The policy logs token requests again: kubelets' mints arrive.
	write(20, 2)
	if !sink.WaitFor(bound, func(r []harness.Record) bool { return len(silence(r)) >= 2 }) {
		agg.Proc.Dump(t)
		t.Fatalf("no cluster_resumed (no_token_requests) within %v of token requests logged again; records %v", bound, silence(sink.Records()))
	}
	if got := silence(sink.Records()); len(got) != 2 || got[1] != "cluster_resumed" {
		t.Errorf("no_token_requests records %v, want [cluster_silent cluster_resumed]", got)
	}
	if n := len(harness.ByEvent(sink.Records(), "tokenwatch.token_request")); n != 0 {
		t.Errorf("%d token_request alerts for kubelets' excluded mints, want 0", n)
	}
}
