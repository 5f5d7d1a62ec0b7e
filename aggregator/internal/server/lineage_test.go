package server

import (
	"slices"
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// mint is a token create that minted the token jti, made with the token
// cred when it is not "".
func mint(user, auditID, jti, cred, ip string) *tokenwatchv1.TokenEvent {
	e := event(user, auditID, audit.StageResponseComplete, 201, "team-a", "builder", ip)
	e.Annotations = map[string]string{lineage.AnnotationIssuedCredentialID: "JTI=" + jti}
	if cred != "" {
		e.User.Extra = map[string]*tokenwatchv1.StringList{lineage.ExtraCredentialID: {Values: []string{"JTI=" + cred}}}
	}
	return e
}

// hasWatch reports whether ups add a token watch of jti.
func hasWatch(ups []*tokenwatchv1.WatchUpdate, jti string) bool {
	return slices.ContainsFunc(ups, func(u *tokenwatchv1.WatchUpdate) bool {
		return slices.ContainsFunc(u.GetAdd(), func(w *tokenwatchv1.Watch) bool {
			return w.GetKind() == tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN && w.GetKey() == jti
		})
	})
}

// waitWatch receives on an agent with nothing to acknowledge until a
// token watch of jti arrives.
func (a *agent) waitWatch(t *testing.T, jti string) {
	t.Helper()
	for !hasWatch(a.watches, jti) {
		r, err := a.st.Recv()
		if err != nil {
			t.Fatalf("waiting for the watch of %s: %v", jti, err)
		}
		if r.GetWatch() == nil {
			t.Fatalf("waiting for the watch of %s: got %v", jti, r)
		}
		a.watches = append(a.watches, r.GetWatch())
	}
}

// TestLineageOverTheStream runs token lineage through the real gRPC
// stack and pipeline: a mint's watch reaches the minting agent before its
// ack and every other lineage agent; a use another agent sends is a
// token_use; a token create by a default-excluded user made with the
// watched token is a chain (kept by the screening codec) whose own token
// is watched in turn.
func TestLineageOverTheStream(t *testing.T) {
	s := newSetup(t)
	agg := s.start(t)
	a := dial(t, agg.addr, "prod", "cp-1", false)
	b := dial(t, agg.addr, "prod", "cp-2", false)

	a.send(t, []*tokenwatchv1.TokenEvent{mint("alice", "m1", "j-1", "", "10.1.2.3")})
	if !hasWatch(a.watches, "j-1") {
		t.Fatalf("the minting agent's updates before its ack = %v, want the watch of j-1", a.watches)
	}
	b.waitWatch(t, "j-1")

	use := eventAt("system:serviceaccount:team-a:builder", "u1", audit.StageResponseComplete, 200, "kube-system", "", "10.9.9.9",
		"2026-11-26T23:09:40.000001Z")
	use.Verb, use.RequestUri = "list", "/api/v1/namespaces/kube-system/secrets"
	use.ObjectRef = &tokenwatchv1.ObjectRef{Resource: "secrets", Namespace: "kube-system", ApiVersion: "v1"}
	use.User.Extra = map[string]*tokenwatchv1.StringList{lineage.ExtraCredentialID: {Values: []string{"JTI=j-1"}}}
	b.sendBatch(t, &tokenwatchv1.Batch{Uses: []*tokenwatchv1.LineageEvent{{Event: use, Matched: []tokenwatchv1.LineageKind{tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}}}})
	recs := agg.out.waitFor(t, "the token_use of u1", hasAuditID("u1"))
	for _, r := range recs {
		if r.Attrs["kubernetes.audit.auditID"] == "u1" && (r.EventName != lineage.EventTokenUse || r.Attrs["tokenwatch.lineage.jti"] != "j-1") {
			t.Errorf("record of u1 = %s jti %q, want a token_use of j-1", r.EventName, r.Attrs["tokenwatch.lineage.jti"])
		}
	}

	a.send(t, []*tokenwatchv1.TokenEvent{mint("system:kube-controller-manager", "c1", "j-2", "j-1", "10.1.2.4")})
	if !hasWatch(a.watches, "j-2") {
		t.Errorf("the chain's token is not watched: updates %v", a.watches)
	}
	recs = agg.out.waitFor(t, "the chain c1", func(r []record) bool { return hasAuditID("c1")(tokenRequests(r)) })
	for _, r := range tokenRequests(recs) {
		if r.Attrs["kubernetes.audit.auditID"] == "c1" && (r.Attrs[lineage.AttrParentJTI] != "j-1" || r.Attrs[lineage.AttrRootUser] != "alice" || r.Severity != "high") {
			t.Errorf("chain record = %v %v, want high with parent j-1 and root alice", r.Severity, r.Attrs)
		}
	}
}

// sendBatch sends b as the agent's next batch and waits for its ack.
func (a *agent) sendBatch(t *testing.T, b *tokenwatchv1.Batch) {
	t.Helper()
	a.seq++
	b.Seq = a.seq
	if err := a.st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}}); err != nil {
		t.Fatalf("send batch %d: %v", a.seq, err)
	}
	r, err := a.recv()
	if err != nil || r.GetAck().GetSeq() != a.seq {
		t.Fatalf("batch %d: %v, %v", a.seq, r, err)
	}
}
