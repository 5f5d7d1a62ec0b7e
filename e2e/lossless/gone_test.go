package lossless

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/auditwrite"
	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// TestDeletedBackupsReported: while the agent is down, lumberjack deletes
// backups (MaxBackups 2) the agent never read. That loss cannot be undone,
// but it must not be silent: an audit_data_lost record says so, and what
// does arrive is still exactly once and only what was written.
func TestDeletedBackupsReported(t *testing.T) {
	auditLog, sink, _, agent := startPipeline(t)

	cfg := auditwrite.Config{Path: auditLog, Mode: auditwrite.Lumberjack, MaxSizeMB: 1, MaxBackups: 2,
		Compress: true, AlertEvery: 97, SystemEvery: 89, Cluster: "c1"}
	ctx := context.Background()
	first := cfg
	first.Events = 600 // well inside the first file
	r1, err := auditwrite.Run(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	keys1 := harness.KeysOf(r1.Wants)
	if !sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return harness.CountDistinct(r, keys1) == len(keys1) }) {
		t.Fatalf("the first %d alerts did not arrive", len(keys1))
	}
	if err := agent.Proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-agent.Proc.Done()

	second := cfg
	second.Events = 10 * 930 // about 10 rotations: all but 2 backups deleted
	r2, err := auditwrite.Run(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	wants := append(r1.Wants, r2.Wants...)
	agent.Start(t)

	lost := func(r []harness.Record) bool {
		for _, x := range harness.ByEvent(r, harness.EventPipeline) {
			if x.Str("tokenwatch.pipeline.kind") == "audit_data_lost" {
				return true
			}
		}
		return false
	}
	reported := sink.WaitProgress(30*time.Second, 2*time.Minute, lost)
	sink.Quiet(4*time.Second, 30*time.Second)
	recs := sink.Records()
	res := harness.Compare(recs, wants)
	var reasons []string
	for _, x := range harness.ByEvent(recs, harness.EventPipeline) {
		if x.Str("tokenwatch.pipeline.kind") == "audit_data_lost" {
			reasons = append(reasons, x.Str("tokenwatch.loss.reason"))
		}
	}
	t.Logf("scenario backups_deleted_unread: expected at most %d, received %d (missing %d, lost with the deleted backups); audit_data_lost records: %d %v",
		res.Want, res.Got, len(res.Missing), len(reasons), reasons)
	if !reported {
		t.Errorf("backups were deleted unread and no audit_data_lost record arrived")
	}
	if len(res.Missing) == 0 {
		t.Errorf("nothing was missing: the scenario did not delete unread data (test setup)")
	}
	if len(res.Unexpected) > 0 || len(res.Duplicates) > 0 || len(res.Mismatches) > 0 {
		t.Errorf("what arrived is not a clean subset of the expected set: %s", res)
	}
}
