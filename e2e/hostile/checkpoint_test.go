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

// TestDeletedCheckpointReported: the agent's checkpoint is deleted while
// it is down and the log grows meanwhile. With --start-at end (the
// default) the agent starts again at the end of the live file, skipping
// what was written while it was down; it must say so: an audit_data_lost
// record with reason checkpoint_missing and the bytes skipped, and a
// warning at start.
func TestDeletedCheckpointReported(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit", "audit.log")
	if err := os.MkdirAll(filepath.Dir(auditLog), 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(events int) auditwrite.Result {
		t.Helper()
		res, err := auditwrite.Run(context.Background(), auditwrite.Config{Path: auditLog, Mode: auditwrite.Lumberjack,
			MaxSizeMB: 1024, Events: events, AlertEvery: 7, Cluster: "c1"})
		if err != nil {
			t.Fatalf("write the audit log: %v", err)
		}
		return res
	}
	write(50) // history at the first start: skipped by --start-at end, rightly

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Start(t)
	stateDir := filepath.Join(dir, "agent-state")
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: auditLog,
		Aggregator: agg.Listen, StateDir: stateDir, Metrics: harness.Addr(harness.FreePort(t)), StartAt: "end"}
	agent.Start(t)

	// Read and acknowledged: the checkpoint is written.
	first := harness.KeysOf(write(50).Wants)
	const bound = 60 * time.Second // failure bounds, not measurements
	if !sink.WaitFor(bound, func(r []harness.Record) bool { return harness.CountDistinct(r, first) == len(first) }) {
		t.Fatalf("the first %d alerts did not arrive", len(first))
	}
	if err := agent.Proc.Stop(bound); err != nil {
		t.Fatalf("agent did not stop on SIGTERM: %v", err)
	}
	lostFirstRun := lossRecords(sink.Records())
	if len(lostFirstRun) != 0 {
		t.Errorf("audit_data_lost before the checkpoint was deleted: %v", lostFirstRun)
	}

	// Down: the log grows, the checkpoint is deleted.
	down := write(50)
	if err := os.Remove(filepath.Join(stateDir, "checkpoint.json")); err != nil {
		t.Fatalf("delete the checkpoint: %v", err)
	}
	fi, err := os.Stat(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	agent.Start(t)
	if !sink.WaitFor(bound, func(r []harness.Record) bool { return len(lossRecords(r)) > 0 }) {
		t.Fatalf("the agent skipped %d bytes (%d alerts written while it was down) and no audit_data_lost record arrived",
			fi.Size(), len(down.Wants))
	}
	sink.Quiet(2*time.Second, 20*time.Second)
	lost := lossRecords(sink.Records())
	if len(lost) != 1 {
		t.Fatalf("audit_data_lost records: %d, want 1: %v", len(lost), lost)
	}
	r := lost[0]
	if got := r.Str("tokenwatch.loss.reason"); got != "checkpoint_missing" {
		t.Errorf("tokenwatch.loss.reason = %q, want checkpoint_missing", got)
	}
	if got := r.Attrs["tokenwatch.bytes_lost"]; got != fi.Size() {
		t.Errorf("tokenwatch.bytes_lost = %v (%T), want the live file's %d bytes", got, got, fi.Size())
	}
	if got := r.Str("log.file.name"); got != auditLog {
		t.Errorf("log.file.name = %q, want %q", got, auditLog)
	}
	t.Logf("scenario checkpoint_deleted: %d bytes skipped, record: %s", fi.Size(), r.Body)
	if _, stderr := agent.Proc.Output(); !strings.Contains(string(stderr), "checkpoint missing") {
		t.Errorf("the agent did not warn that its checkpoint is missing:\n%s", stderr)
	}
}

func lossRecords(recs []harness.Record) []harness.Record {
	return harness.ByKind(recs, "audit_data_lost")
}
