package hostile

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	dir, auditLog := newAuditLog(t, 200, 0) // routine requests only: the policy logs no token request

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
	writeAudit(t, auditLog, 20, 2)
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

// TestAuditPolicyChangeReported: an agent watching the apiserver's audit
// policy file (--audit-policy-file) makes the aggregator report an edit of
// it as audit_policy_changed, with the node and both digests; the first
// digest it hears is the baseline, not a change.
func TestAuditPolicyChangeReported(t *testing.T) {
	w := startPolicyWatch(t)
	// The agent digests the file for each heartbeat: the first one is the
	// aggregator's baseline. The edit comes after it was sent.
	if err := w.agent.Proc.WaitStderr("audit policy file watched", policyBound); err != nil {
		w.agent.Proc.Dump(t)
		t.Fatal(err)
	}
	hidden := w.hide(t)
	if !w.sink.WaitFor(policyBound, func(r []harness.Record) bool { return len(policyChanged(r)) > 0 }) {
		w.agg.Proc.Dump(t)
		t.Fatalf("no audit_policy_changed within %v of the edit", policyBound)
	}
	r := policyChanged(w.sink.Records())[0]
	if got := len(policyChanged(w.sink.Records())); got != 1 {
		t.Errorf("%d audit_policy_changed records, want 1 (the baseline is no change)", got)
	}
	if r.Str("k8s.cluster.name") != "prod" || r.Str("k8s.node.name") != "cp-1" {
		t.Errorf("record for %s/%s, want prod/cp-1", r.Str("k8s.cluster.name"), r.Str("k8s.node.name"))
	}
	if was, is := r.Str("tokenwatch.audit_policy.previous_sha256"), r.Str("tokenwatch.audit_policy.sha256"); was != sha256Hex(w.kit) || is != sha256Hex(hidden) {
		t.Errorf("digests %s -> %s, want %s -> %s", was, is, sha256Hex(w.kit), sha256Hex(hidden))
	}
	if r.SeverityNumber != 17 {
		t.Errorf("severity %d, want 17 (high)", r.SeverityNumber)
	}
	if got, want := r.Str("tokenwatch.audit_policy.gaps"), "rule 1 (level None) hides token requests by users mallory"; got != want {
		t.Errorf("gaps %q, want %q", got, want)
	}
}

// TestAuditPolicyGapReported: a policy that keeps some token requests out
// of the audit log from the start (a rule above tokenwatch's that drops
// kube-system) is reported as audit_policy_gap when first heard, naming
// the rule and what it hides; the file is the baseline, unchanged.
func TestAuditPolicyGapReported(t *testing.T) {
	w := startPolicyWatch(t, func(kit string) string {
		return strings.Replace(kit, "rules:\n", "rules:\n  - level: None\n    namespaces: [\"kube-system\"]\n", 1)
	})
	if !w.sink.WaitFor(policyBound, func(r []harness.Record) bool { return len(harness.ByKind(r, "audit_policy_gap")) > 0 }) {
		w.agg.Proc.Dump(t)
		t.Fatalf("no audit_policy_gap within %v", policyBound)
	}
	r := harness.ByKind(w.sink.Records(), "audit_policy_gap")[0]
	if got, want := r.Str("tokenwatch.audit_policy.gaps"), "rule 1 (level None) hides token requests in namespaces kube-system"; got != want {
		t.Errorf("gaps %q, want %q", got, want)
	}
	if r.Str("k8s.node.name") != "cp-1" || r.Str("tokenwatch.audit_policy.sha256") != sha256Hex(w.kit) || r.SeverityNumber != 17 {
		t.Errorf("record for node %q, digest %q, severity %d; want cp-1, the file's, 17",
			r.Str("k8s.node.name"), r.Str("tokenwatch.audit_policy.sha256"), r.SeverityNumber)
	}
	if err := w.agent.Proc.WaitStderr("token_requests_unlogged", policyBound); err != nil {
		t.Errorf("the agent did not warn of the gap: %v", err)
	}
}

// TestAuditPolicyEditWhileAggregatorDown: the aggregator keeps each node's
// audit policy baseline in its state, so an edit made while it was down is
// reported by the next run, at the node's first heartbeat; it would
// otherwise take the edited file as the baseline and say nothing.
func TestAuditPolicyEditWhileAggregatorDown(t *testing.T) {
	w := startPolicyWatch(t)
	if err := w.agg.Proc.WaitStderr("audit policy baseline stored", policyBound); err != nil {
		w.agg.Proc.Dump(t)
		t.Fatal(err)
	}
	if err := w.agg.Proc.Stop(policyBound); err != nil {
		t.Fatalf("aggregator graceful stop: %v", err)
	}
	hidden := w.hide(t)
	w.agg.Start(t)
	if !w.sink.WaitFor(policyBound, func(r []harness.Record) bool { return len(policyChanged(r)) > 0 }) {
		w.agg.Proc.Dump(t)
		t.Fatalf("no audit_policy_changed within %v of the restart", policyBound)
	}
	r := policyChanged(w.sink.Records())[0]
	if was, is := r.Str("tokenwatch.audit_policy.previous_sha256"), r.Str("tokenwatch.audit_policy.sha256"); was != sha256Hex(w.kit) || is != sha256Hex(hidden) {
		t.Errorf("digests %s -> %s, want %s -> %s", was, is, sha256Hex(w.kit), sha256Hex(hidden))
	}
}

const policyBound = 60 * time.Second // failure bounds, not measurements

// policyWatch is an aggregator and an agent of node prod/cp-1 watching a
// copy of the kit's audit policy.
type policyWatch struct {
	sink   *harness.Sink
	agg    *harness.Aggregator
	agent  *harness.Agent
	policy string
	kit    []byte
}

// startPolicyWatch starts them; edit, when given, changes the kit's policy
// before the start.
func startPolicyWatch(t *testing.T, edit ...func(kit string) string) *policyWatch {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir, auditLog := newAuditLog(t, 50, 5)
	w := &policyWatch{policy: filepath.Join(dir, "audit-policy.yaml")}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if w.kit, err = os.ReadFile(filepath.Join(root, "deploy", "kubeadm", "audit-policy.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, e := range edit {
		w.kit = []byte(e(string(w.kit)))
	}
	if err := os.WriteFile(w.policy, w.kit, 0o600); err != nil {
		t.Fatal(err)
	}
	w.sink = harness.StartSink(t)
	w.agg = harness.NewAggregator(t, b, logs, w.sink.Endpoint)
	w.agg.Start(t)
	w.agent = &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "prod", Node: "cp-1", AuditLog: auditLog,
		Aggregator: w.agg.Listen, StartAt: "beginning", Extra: []string{"--audit-policy-file", w.policy}}
	w.agent.Start(t)
	return w
}

// hide edits the policy to hide one identity's token requests (a rule
// above the kit's) and returns the new file.
func (w *policyWatch) hide(t *testing.T) []byte {
	hidden := strings.Replace(string(w.kit), "rules:\n", "rules:\n  - level: None\n    users: [\"mallory\"]\n", 1)
	if hidden == string(w.kit) {
		t.Fatal("the kit's policy has no rules: line to insert before")
	}
	if err := os.WriteFile(w.policy, []byte(hidden), 0o600); err != nil {
		t.Fatal(err)
	}
	return []byte(hidden)
}

// policyChanged returns the audit_policy_changed records of recs.
func policyChanged(recs []harness.Record) []harness.Record {
	return harness.ByKind(recs, "audit_policy_changed")
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
