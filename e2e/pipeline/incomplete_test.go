package pipeline

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// TestIncompleteEventsReplayedOnce: events without auditID or
// requestReceivedTimestamp (old, converted or third-party logs) are each
// their own request: every one alerts, marked incomplete, and a second
// replay of the same file, under its rotated name and gzipped, alerts
// none of them again (issue 15). Before, they all shared one request key
// and merged into one alert.
func TestIncompleteEventsReplayedOnce(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")

	const n = 7
	var data []byte
	for i := range n {
		ev := map[string]any{
			"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
			"stage": "ResponseComplete", "verb": "create",
			"requestURI": fmt.Sprintf("/api/v1/namespaces/team-x/serviceaccounts/sa-%d/token", i),
			"user":       map[string]any{"username": "mallory", "groups": []string{"system:authenticated"}},
			"sourceIPs":  []string{"192.0.2.7"},
			"objectRef": map[string]any{"resource": "serviceaccounts", "namespace": "team-x",
				"name": fmt.Sprintf("sa-%d", i), "apiVersion": "v1", "subresource": "token"},
			"responseStatus": map[string]any{"metadata": map[string]any{}, "code": 201},
			"stageTimestamp": time.Date(2026, 11, 26, 10, 0, i, 0, time.UTC).Format(time.RFC3339Nano),
		}
		// Most lack the auditID; two keep it but lack the received time.
		if i >= n-2 {
			ev["auditID"] = "0badc0de-0000-4000-8000-000000000000"
		} else {
			ev["requestReceivedTimestamp"] = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC).Format(time.RFC3339Nano)
		}
		line, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		data = append(append(data, line...), '\n')
	}
	if err := os.WriteFile(live, data, 0o600); err != nil {
		t.Fatal(err)
	}

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Start(t)
	first := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-first", Cluster: "c1", Node: "cp-1",
		AuditLog: live, Aggregator: agg.Listen}
	first.RunOnce(t, 2*time.Minute)
	incomplete := func(r []harness.Record) int {
		c := 0
		for _, rec := range harness.ByEvent(r, "tokenwatch.token_request") {
			if rec.Attrs["tokenwatch.incomplete_event"] == true {
				c++
			}
		}
		return c
	}
	if !sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return incomplete(r) >= n }) {
		t.Errorf("%d incomplete token_request records arrived, want %d", incomplete(sink.Records()), n)
	}

	// The same file again, as rotation leaves it: renamed and gzipped.
	rotated := filepath.Join(dir, "audit-2026-11-26T10-05-00.000.log")
	if err := os.Rename(live, rotated); err != nil {
		t.Fatal(err)
	}
	gzipInPlace(t, rotated)
	second := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-second", Cluster: "c1", Node: "cp-1",
		AuditLog: rotated + ".gz", Aggregator: agg.Listen}
	second.RunOnce(t, 2*time.Minute)
	sink.Quiet(4*time.Second, 20*time.Second)

	recs := harness.ByEvent(sink.Records(), "tokenwatch.token_request")
	if got := len(recs); got != n {
		t.Errorf("%d token_request records after two replays, want %d (each event once)", got, n)
	}
	if got := incomplete(recs); got != n {
		t.Errorf("%d records marked tokenwatch.incomplete_event=true, want %d", got, n)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		name := r.Str("kubernetes.audit.objectRef.name")
		if seen[name] {
			t.Errorf("service account %s alerted twice", name)
		}
		seen[name] = true
	}
	t.Logf("incomplete events: expected %d, received %d", n, len(recs))
}
