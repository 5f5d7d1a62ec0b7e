package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

// expectation is one alert a hostile scenario must produce, exactly once.
type expectation struct {
	name  string
	match func(r harness.Record) bool
}

// truncated reports whether r says it cut the attribute key.
func truncated(r harness.Record, key string) bool {
	list, _ := r.Attrs["tokenwatch.truncated"].([]any)
	return slices.ContainsFunc(list, func(v any) bool { return v == key })
}

// TestHostileRequests (issue 12, points 1 and 2): what an audited client
// controls must not stop, slow or hide alerts. Against a real
// kube-apiserver: an unauthenticated client and an authenticated one send a
// token request with a 40,000-character Audit-ID header (logged as sent,
// 403); an authenticated user mints a token whose body is padded to just
// under the 3 MiB body limit (201, a ~3.1 MB audit event); then an ordinary
// attack. Every one alerts, with the actor (and the target), exactly once.
// The apiserver rotates at 8 MB: lumberjack refuses any event larger than
// --audit-log-maxsize before an agent can see it.
func TestHostileRequests(t *testing.T) {
	w := startWatched(t, kube.Options{Name: "h1", MaxSizeMB: 8}, "")
	c, agent, agg, sink := w.c, w.agent, w.agg, w.sink
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	longID := func(who string) string {
		p := "hostile-" + who + "-"
		return p + strings.Repeat("x", 40000-len(p))
	}
	var want []expectation
	longIDAlert := func(user, prefix string) expectation {
		return expectation{name: user + " with a 40,000-character Audit-ID", match: func(r harness.Record) bool {
			return r.Str("user.name") == user && strings.HasPrefix(r.Str("kubernetes.audit.auditID"), prefix) &&
				r.Str("event.outcome") == "failure" && r.Str("kubernetes.audit.objectRef.name") == "app" &&
				truncated(r, "kubernetes.audit.auditID")
		}}
	}
	for _, who := range []struct{ user, id string }{{"", longID("anonymous")}, {"bob", longID("bob")}} {
		m := c.RawMint(t, ctx, "team-a", "app", kube.RawMintOptions{User: who.user, AuditID: who.id})
		if m.Status != http.StatusForbidden {
			t.Errorf("token request as %q with a long Audit-ID: HTTP %d, want 403", who.user, m.Status)
		}
		user := who.user
		if user == "" {
			user = "system:anonymous"
		}
		want = append(want, longIDAlert(user, who.id[:64]))
	}

	padded := c.RawMint(t, ctx, "team-a", "app", kube.RawMintOptions{User: "alice",
		Audiences: []string{strings.Repeat("a", 3145500)}})
	if padded.Status != http.StatusCreated || padded.Token == "" {
		t.Errorf("padded TokenRequest by alice: HTTP %d, want 201 with a token", padded.Status)
	}
	want = append(want, expectation{name: "alice's padded TokenRequest", match: func(r harness.Record) bool {
		return r.Str("kubernetes.audit.auditID") == padded.AuditID && r.Str("user.name") == "alice" &&
			r.Str("event.outcome") == "success" && r.Str("k8s.namespace.name") == "team-a" &&
			r.Str("kubernetes.audit.objectRef.name") == "app"
	}})

	// The ordinary attack after them: bob for another namespace's service
	// account (denied), alice in team-a (allowed).
	for _, o := range []struct {
		user, ns, outcome string
	}{{"bob", "team-b", "failure"}, {"alice", "team-a", "success"}} {
		m := c.CertClient(t, o.user).MintToken(ctx, o.ns, "app", false)
		if m.AuditID == "" {
			t.Fatalf("%s mint %s/app: no Audit-Id (err %v)", o.user, o.ns, m.Err)
		}
		want = append(want, expectation{name: fmt.Sprintf("%s's ordinary mint in %s", o.user, o.ns), match: func(r harness.Record) bool {
			return r.Str("kubernetes.audit.auditID") == m.AuditID && r.Str("user.name") == o.user &&
				r.Str("event.outcome") == o.outcome && r.Str("k8s.namespace.name") == o.ns
		}})
	}

	count := func(recs []harness.Record, e expectation) int {
		n := 0
		for _, r := range harness.ByEvent(recs, harness.EventTokenRequest) {
			if e.match(r) {
				n++
			}
		}
		return n
	}
	sink.WaitFor(3*time.Minute, func(recs []harness.Record) bool {
		return !slices.ContainsFunc(want, func(e expectation) bool { return count(recs, e) == 0 })
	})
	sink.Quiet(4*time.Second, 30*time.Second)
	recs := sink.Records()
	for _, e := range want {
		n := count(recs, e)
		t.Logf("hostile: %s: %d alerts", e.name, n)
		if n != 1 {
			t.Errorf("%s: %d alerts, want exactly 1", e.name, n)
		}
	}
	for _, r := range harness.ByEvent(recs, harness.EventPipeline) {
		if r.Str("tokenwatch.pipeline.kind") == "audit_data_lost" {
			t.Errorf("audit_data_lost (%s, %s): a hostile request became a loss instead of an alert",
				r.Str("tokenwatch.loss.reason"), r.Str("tokenwatch.loss.detail"))
		}
	}
	if err := agg.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator did not stop cleanly on SIGTERM: %v", err)
	}
	if err := agent.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("agent did not stop cleanly on SIGTERM: %v", err)
	}
}
