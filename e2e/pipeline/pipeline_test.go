// Package pipeline is the first end-to-end test (issue 2): a generated audit
// log replayed by a real agent process into a real aggregator process that
// exports to the OpenTelemetry Collector's otlpreceiver.
package pipeline

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

var suite harness.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, harness.MainOptions{Leaks: true})) }

// TestGeneratedLogReplay runs aggregator + agent --once over a generated log
// whose token creates are logged at RequestResponse level (minted tokens in
// the file) and asserts: exactly the expected alerts, one per request, with
// the contract's attributes, and no token string anywhere downstream.
func TestGeneratedLogReplay(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.log")
	expect := filepath.Join(dir, "expected.json")
	gen := harness.Start(t, logs, "genaudit", b.GenAudit, "-o", auditLog, "-seed", "7", "-lines", "20000",
		"-response-tokens", "-expect", expect)
	if err := gen.Wait(time.Minute); err != nil {
		t.Fatalf("genaudit: %v", err)
	}
	wants := harness.LoadWants(t, expect, "c1")
	tokens := harness.ResponseTokens(t, auditLog)
	if len(wants) == 0 || len(tokens) == 0 {
		t.Fatalf("generated log has %d expected alerts and %d minted tokens; want both > 0", len(wants), len(tokens))
	}

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Start(t)
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1",
		AuditLog: auditLog, Aggregator: agg.Listen}
	agent.RunOnce(t, 2*time.Minute)

	keys := harness.KeysOf(wants)
	if !sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return harness.CountDistinct(r, keys) == len(keys) }) {
		t.Logf("not all expected alerts arrived within 60s")
	}
	// Late duplicates or stray records would arrive within the stage grace
	// (2 s) and the exporter's batch interval (1 s): wait for a quiet spell.
	sink.Quiet(4*time.Second, 20*time.Second)
	res := harness.Compare(sink.Records(), wants)
	harness.Report(t, "replay", res)

	for _, r := range harness.ByEvent(sink.Records(), harness.EventTokenRequest) {
		if r.Str("k8s.node.name") != "cp-1" || r.Str("k8s.cluster.name") != "c1" {
			t.Errorf("record %s: cluster/node = %s/%s, want c1/cp-1", harness.RecordKey(r), r.Str("k8s.cluster.name"), r.Str("k8s.node.name"))
			break
		}
	}
	if err := agg.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator did not stop cleanly: %v", err)
	}
	leaks := harness.FindLeaks(t, tokens, sink.Raw(), []*harness.Proc{agg.Proc, agent.Proc}, agg.StateDir)
	for i, l := range leaks {
		if i == 5 {
			break
		}
		t.Errorf("minted token leaked into %s", l.Where)
	}
	t.Logf("searched %d minted tokens in %d OTLP payloads, process output and the aggregator state: %d leaks",
		len(tokens), len(sink.Raw()), len(leaks))
}
