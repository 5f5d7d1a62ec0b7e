package hostile

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// TestLegacyAuditLogFormatReported: a kube-apiserver restarted with
// --audit-log-format=legacy (by an attacker on the node, or a careless
// edit) appends text lines to a log the agent reads: it grows, heartbeats
// flow, and nothing in it can be matched. The agent says so in its
// heartbeats and the aggregator reports the node cluster_silent with
// reason audit_log_not_json silence.after later, however much the log
// grows, then cluster_resumed once JSON lines come back.
func TestLegacyAuditLogFormatReported(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir, auditLog := newAuditLog(t, 20, 5)
	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	// Agents send a heartbeat every 10 s: silence.after must exceed that.
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", "silence:\n  after: 25s\n")
	agg.Start(t)
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "prod", Node: "cp-1", AuditLog: auditLog,
		Aggregator: agg.Listen, StartAt: "beginning"}
	agent.Start(t)

	// The apiserver now writes legacy lines, all the time, as a busy one does.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	legacy := func(i int) string {
		return fmt.Sprintf("%s AUDIT: id=\"l-%d\" stage=\"ResponseComplete\" ip=\"10.0.0.7\" method=\"create\" user=\"mallory\" groups=\"\\\"system:authenticated\\\"\" as=\"<self>\" asgroups=\"<lookup>\" user-agent=\"kubectl\" namespace=\"kube-system\" uri=\"/api/v1/namespaces/kube-system/serviceaccounts/admin/token\" response=\"201\"\n",
			time.Now().UTC().Format(time.RFC3339Nano), i)
	}
	appendLine := func(s string) error {
		f, err := os.OpenFile(auditLog, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(s)
		return err
	}
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond) // the apiserver's pace, not a synchronisation
		defer tick.Stop()
		for i := 0; ; i++ {
			if err := appendLine(legacy(i)); err != nil {
				t.Errorf("append: %v", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})

	reason := func(recs []harness.Record) []string {
		var out []string
		for _, r := range harness.ByEvent(recs, "tokenwatch.pipeline") {
			if r.Str("tokenwatch.silence.reason") != "" {
				out = append(out, r.Str("tokenwatch.pipeline.kind")+" "+r.Str("tokenwatch.silence.reason"))
			}
		}
		return out
	}
	const bound = 120 * time.Second // failure bounds, not measurements
	if !sink.WaitFor(bound, func(r []harness.Record) bool { return len(reason(r)) > 0 }) {
		agg.Proc.Dump(t)
		t.Fatalf("no silence record within %v of legacy lines", bound)
	}
	if got := reason(sink.Records()); got[0] != "cluster_silent audit_log_not_json" {
		t.Fatalf("silence records %v, want cluster_silent audit_log_not_json first", got)
	}
	if err := agent.Proc.WaitStderr("audit log is not in the JSON format", bound); err != nil {
		t.Errorf("the agent did not warn: %v", err)
	}
	stop()
	wg.Wait()
	// JSON lines again (the flag reverted).
	writeAudit(t, auditLog, 5, 0)
	if !sink.WaitFor(bound, func(r []harness.Record) bool { return len(reason(r)) >= 2 }) {
		agg.Proc.Dump(t)
		t.Fatalf("no cluster_resumed within %v of JSON lines; records %v", bound, reason(sink.Records()))
	}
	if got := reason(sink.Records()); got[1] != "cluster_resumed audit_log_not_json" {
		t.Errorf("silence records %v, want cluster_resumed audit_log_not_json second", got)
	}
}
