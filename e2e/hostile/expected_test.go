package hostile

import (
	"slices"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// TestMissingControlPlaneNodeReported: with silence.expected_nodes saying
// cluster prod has two control-plane nodes, an agent that never connects
// (a node the DaemonSet does not reach) is reported: cluster_silent with
// the reason nodes_missing and the node heard, silence.after after the
// start, and tokenwatch_aggregator_silences; cluster_resumed once the
// second agent is heard. Without it the
// audit log of that node's kube-apiserver would be read by no one, and
// nothing would say so.
func TestMissingControlPlaneNodeReported(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir, auditLog := newAuditLog(t, 20, 5)
	_, auditLog2 := newAuditLog(t, 20, 5)
	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", "silence:\n  after: 15s\n  expected_nodes:\n    prod: 2\n")
	agg.Start(t)
	start := func(node, path string) {
		a := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-" + node, Cluster: "prod", Node: node,
			AuditLog: path, Aggregator: agg.Listen, StartAt: "beginning"}
		a.Start(t)
	}
	start("cp-1", auditLog)
	missing := func(kind string) func([]harness.Record) bool {
		return func(recs []harness.Record) bool { return len(nodesMissing(recs, kind)) > 0 }
	}
	if !sink.WaitFor(time.Minute, missing("cluster_silent")) {
		agg.Proc.Dump(t)
		t.Fatal("no nodes_missing cluster_silent within a minute with one of two nodes heard")
	}
	r := nodesMissing(sink.Records(), "cluster_silent")[0]
	heard, _ := r.Attrs["tokenwatch.nodes.heard_names"].([]any)
	if !slices.Equal(heard, []any{"cp-1"}) || r.Attrs["tokenwatch.nodes.expected"] != int64(2) || r.SeverityNumber != 17 {
		t.Errorf("record: heard %v, expected %v, severity %d; want [cp-1], 2, 17", heard, r.Attrs["tokenwatch.nodes.expected"], r.SeverityNumber)
	}
	if m := harness.MetricLines(agg.Metrics, "tokenwatch_aggregator_silences"); !slices.Contains(m, `tokenwatch_aggregator_silences{cluster="prod",reason="nodes_missing"} 1`) {
		t.Errorf("aggregator metric: %q, want prod's nodes_missing at 1", m)
	}
	start("cp-2", auditLog2)
	if !sink.WaitFor(time.Minute, missing("cluster_resumed")) {
		t.Fatal("no nodes_missing cluster_resumed within a minute of the second node's agent")
	}
	if n := len(nodesMissing(sink.Records(), "cluster_silent")); n != 1 {
		t.Errorf("%d nodes_missing cluster_silent records, want 1", n)
	}
}

// nodesMissing returns the records of kind with the reason nodes_missing.
func nodesMissing(recs []harness.Record, kind string) []harness.Record {
	var out []harness.Record
	for _, r := range harness.ByKind(recs, kind) {
		if r.Str("tokenwatch.silence.reason") == "nodes_missing" {
			out = append(out, r)
		}
	}
	return out
}
