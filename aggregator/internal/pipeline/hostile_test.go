package pipeline

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// TestClientControlledAuditIDAlerts (issue 12, point 1): kube-apiserver logs
// a client's Audit-ID header as sent, of any length. Whatever its length,
// the request alerts once with its actor, the batch commits (so it is
// acknowledged and the agent moves on), and the node's next request alerts.
func TestClientControlledAuditIDAlerts(t *testing.T) {
	const rrt = "2026-11-26T23:09:14.000000Z"
	tests := []struct {
		name   string
		id     string
		alone  bool // only the RequestReceived stage arrives
		wantID string
	}{
		{name: "ordinary", id: "5e1f7a52-6c3b-4c9e-9d1e-0f5b6f1b2a3c"},
		{name: "40,004 characters, both stages", id: strings.Repeat("A", 40004)},
		{name: "40,004 characters, RequestReceived alone", id: strings.Repeat("B", 40004), alone: true},
		{name: "1 MiB", id: strings.Repeat("C", 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, config.Default())
			f.process(t, batch("prod", "cp-1", received("system:anonymous", tt.id, rrt)))
			if !tt.alone {
				f.process(t, batch("prod", "cp-1", completed("system:anonymous", tt.id, rrt, 403)))
				// A re-send of the same batch is deduplicated.
				f.process(t, batch("prod", "cp-1", completed("system:anonymous", tt.id, rrt, 403)))
			}
			f.clk.Add(time.Minute)
			f.tick(t)
			f.process(t, batch("prod", "cp-1", completed("mallory", "next", rrt, 201)))

			var got []alert.Record
			for _, r := range f.outbox(t) {
				if r.EventName == alert.EventTokenRequest {
					got = append(got, r)
				}
			}
			if len(got) != 2 {
				t.Fatalf("token_request records = %d, want the hostile one and the next", len(got))
			}
			r := got[0]
			if u := str(t, r, "user.name"); u != "system:anonymous" {
				t.Errorf("user.name = %q, want system:anonymous", u)
			}
			id := str(t, r, "kubernetes.audit.auditID")
			prefix, _, _ := strings.Cut(id, "...[truncated ")
			if !strings.HasPrefix(tt.id, prefix) || len(prefix) < min(len(tt.id), 1024) || len(id) > alert.MaxValueBytes {
				t.Errorf("auditID = %d bytes, want a prefix of the logged ID of at most %d", len(id), alert.MaxValueBytes)
			}
			v, _ := r.Attr(alert.AttrTruncated)
			if cut := slices.Contains(v.Strings, "kubernetes.audit.auditID"); cut != (len(tt.id) > alert.MaxValueBytes) {
				t.Errorf("%s = %v: auditID listed %v, want %v", alert.AttrTruncated, v.Strings, cut, !cut)
			}
			if u := str(t, got[1], "user.name"); u != "mallory" {
				t.Errorf("next record's user.name = %q, want mallory", u)
			}
			if _, err := f.p.Process(context.Background(), batch("prod", "cp-1", received("system:anonymous", tt.id, rrt))); err != nil {
				t.Errorf("Process(stage of an alerted request) = %v", err)
			}
		})
	}
}
