package silence

import (
	"fmt"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// KindAuditPolicyChanged is the tokenwatch.pipeline.kind of the record that
// reports that a node's audit policy file changed, or became unreadable.
const KindAuditPolicyChanged = "audit_policy_changed"

// maxDigest is the length of a hex SHA-256; a longer value (from a
// misbehaving agent) is cut there.
const maxDigest = 64

// Policy is what a heartbeat says of the node's kube-apiserver audit policy
// file: its digest, or why it cannot be read; zero when the agent does not
// watch it (no --audit-policy-file, or an older agent).
type Policy struct {
	SHA256 string // hex
	Err    string
}

func (p Policy) known() bool { return p.SHA256 != "" || p.Err != "" }

func (p Policy) String() string {
	if p.Err != "" {
		return "unreadable: " + p.Err
	}
	return "sha256 " + p.SHA256
}

// heardPolicy takes what a heartbeat says of the policy file; a heartbeat
// that says nothing leaves what was known.
func (s *state) heardPolicy(p Policy) {
	if !p.known() {
		return
	}
	if len(p.Err) > maxFileError {
		p.Err = p.Err[:maxFileError] + "..."
	}
	if len(p.SHA256) > maxDigest { // not a hex SHA-256: kept bounded
		p.SHA256 = p.SHA256[:maxDigest] + "..."
	}
	s.policy = p
}

// policyRecords returns, for the nodes of keys in their order, an
// audit_policy_changed record for each whose policy file is not what it
// was at the last record, or at the first heartbeat that named it. A node
// has at most one per After: the first change is reported at once, later
// ones when After has passed since the last record, as the file is then
// (so a heartbeat stream flipping digests cannot flood the outbox).
func (t *Tracker) policyRecords(now time.Time, keys []node) []alert.Record {
	var out []alert.Record
	for _, k := range keys {
		s := t.nodes[k]
		switch {
		case !s.policy.known() || s.policy == s.policyBase:
		case !s.policyBase.known():
			s.policyBase = s.policy // the first one heard: nothing to compare with
		case !s.policyAt.IsZero() && now.Sub(s.policyAt) < t.cfg.After:
			// reported within After: held
		default:
			out = append(out, policyRecord(k, s.policyBase, s.policy, now))
			s.policyBase, s.policyAt = s.policy, now
		}
	}
	return out
}

func policyRecord(k node, was, is Policy, now time.Time) alert.Record {
	attrs := []alert.Attr{
		alert.String("tokenwatch.pipeline.kind", KindAuditPolicyChanged),
		alert.String("k8s.cluster.name", k.cluster),
		alert.String("k8s.node.name", k.name),
		alert.String("tokenwatch.audit_policy.sha256", is.SHA256),
		alert.String("tokenwatch.audit_policy.previous_sha256", was.SHA256),
	}
	if is.Err != "" {
		attrs = append(attrs, alert.String("tokenwatch.audit_policy.error", is.Err))
	}
	return alert.Record{
		ID: alert.PipelineID(KindAuditPolicyChanged + "\x00" + k.cluster + "\x00" + k.name + "\x00" +
			was.String() + "\x00" + is.String() + "\x00" + now.UTC().Format(time.RFC3339Nano)),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.High,
		Body: fmt.Sprintf("The audit policy file on node %s of cluster %s changed (%s, was %s). "+
			"kube-apiserver applies it when it restarts: a rule above tokenwatch's can hide token requests from it.",
			k.name, k.cluster, is, was),
		Attrs: attrs,
	}
}
