package hostile

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// auditPathSilence is the aggregator's silence.after for the test: longer
// than the heartbeat interval the aggregator asks for (10 s), so that only
// what the agent says of its file can make the node silent.
const auditPathSilence = 15 * time.Second

// TestMissingAuditLogIsNotSilent: an agent started with an --audit-log
// that does not exist stays up but is not ready, warns, exports the file's
// state, and the aggregator reports the node cluster_silent with reason
// no_audit_data while its heartbeats keep coming; never cluster_resumed.
func TestMissingAuditLogIsNotSilent(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", "silence:\n  after: "+auditPathSilence.String()+"\n")
	agg.Start(t)

	a := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-prod", Cluster: "prod", Node: "cp-1",
		AuditLog: filepath.Join(dir, "nonexistent", "dir", "audit.log"), Aggregator: agg.Listen,
		Metrics: harness.Addr(harness.FreePort(t))}
	p := harness.Start(t, logs, a.Name, a.Bin, a.Args()...)
	defer func() {
		if err := p.Stop(15 * time.Second); err != nil {
			t.Errorf("agent stop: %v", err)
		}
	}()

	if err := p.WaitStderr("audit log not readable", 30*time.Second); err != nil {
		p.Dump(t)
		t.Fatal(err)
	}
	if err := p.WaitStderr("connected to aggregator", 30*time.Second); err != nil {
		p.Dump(t)
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + a.Metrics + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "absent") {
		t.Errorf("/readyz = %d %q, want 503 saying the audit log is absent", resp.StatusCode, body)
	}
	gauge := harness.MetricLines(a.Metrics, "tokenwatch_agent_audit_log_state")
	if !hasLine(gauge, `tokenwatch_agent_audit_log_state{state="absent"} 1`) {
		t.Errorf("gauge = %v, want state=absent 1", gauge)
	}

	silent := func(recs []harness.Record) []harness.Record {
		var out []harness.Record
		for _, r := range harness.ByEvent(recs, "tokenwatch.pipeline") {
			if k := r.Str("tokenwatch.pipeline.kind"); k == "cluster_silent" || k == "cluster_resumed" {
				out = append(out, r)
			}
		}
		return out
	}
	if !sink.WaitFor(4*auditPathSilence+30*time.Second, func(recs []harness.Record) bool { return len(silent(recs)) > 0 }) {
		p.Dump(t)
		t.Fatalf("no cluster_silent within %v", 4*auditPathSilence+30*time.Second)
	}
	// Long enough for a heartbeat gap to show as a silence and resume.
	sink.Quiet(auditPathSilence, 2*auditPathSilence)
	got := silent(sink.Records())
	if len(got) != 1 {
		var kinds []string
		for _, r := range got {
			kinds = append(kinds, r.Str("tokenwatch.pipeline.kind")+"/"+r.Str("tokenwatch.silence.reason"))
		}
		t.Fatalf("silence records %v, want one cluster_silent", kinds)
	}
	r := got[0]
	if k, why := r.Str("tokenwatch.pipeline.kind"), r.Str("tokenwatch.silence.reason"); k != "cluster_silent" || why != "no_audit_data" {
		t.Errorf("record %s/%s, want cluster_silent/no_audit_data", k, why)
	}
	if r.Str("k8s.cluster.name") != "prod" || r.Str("k8s.node.name") != "cp-1" {
		t.Errorf("record for %s/%s, want prod/cp-1", r.Str("k8s.cluster.name"), r.Str("k8s.node.name"))
	}
	if !strings.Contains(r.Body, "absent or unreadable") {
		t.Errorf("body %q does not say why", r.Body)
	}
	if p.Exited() {
		t.Error("agent exited; it should stay up, not ready")
	}
}

func hasLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}
