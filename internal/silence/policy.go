package silence

import (
	"fmt"
	"sort"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// KindAuditPolicyChanged is the tokenwatch.pipeline.kind of the record that
// reports that a node's audit policy file changed, or became unreadable.
const KindAuditPolicyChanged = "audit_policy_changed"

// KindAuditPolicyGap is the tokenwatch.pipeline.kind of the record that
// reports that a node's audit policy file, as first heard, keeps token
// requests out of the audit log.
const KindAuditPolicyGap = "audit_policy_gap"

// maxDigest is the length of a hex SHA-256; a longer value (from a
// misbehaving agent) is cut there.
const maxDigest = 64

// maxGaps bounds the gaps kept (the agent sends at most 1 KiB).
const maxGaps = 1024

// Policy is what a heartbeat says of the node's kube-apiserver audit policy
// file: its digest, or why it cannot be read; zero when the agent does not
// watch it (no --audit-policy-file, or an older agent).
type Policy struct {
	SHA256 string // hex
	Err    string
	// Gaps says which token requests the policy keeps out of the audit
	// log, as the agent read it ("" for none).
	Gaps string
}

// Known reports whether p says something of the file: a digest or an
// error (a baseline that does not is a deletion).
func (p Policy) Known() bool { return p.SHA256 != "" || p.Err != "" }

// sameFile reports whether p and o say the same of the file (their gaps,
// read from it, aside).
func (p Policy) sameFile(o Policy) bool { return p.SHA256 == o.SHA256 && p.Err == o.Err }

func (p Policy) String() string {
	if p.Err != "" {
		return "unreadable: " + p.Err
	}
	return "sha256 " + p.SHA256
}

// heardPolicy takes what a heartbeat says of the policy file; a heartbeat
// that says nothing leaves what was known.
func (s *state) heardPolicy(p Policy) {
	if !p.Known() {
		return
	}
	if len(p.Err) > maxFileError {
		p.Err = p.Err[:maxFileError] + "..."
	}
	if len(p.SHA256) > maxDigest { // not a hex SHA-256: kept bounded
		p.SHA256 = p.SHA256[:maxDigest] + "..."
	}
	if len(p.Gaps) > maxGaps {
		p.Gaps = p.Gaps[:maxGaps] + "..."
	}
	s.policy = p
}

// policyRecords returns, for the nodes of keys in their order, an
// audit_policy_changed record for each whose policy file is not what it
// was at the last record, or at the first heartbeat that named it, and an
// audit_policy_gap record for each whose file, as first heard, keeps token
// requests out of the audit log (or whose agent reads other gaps in the same
// file: a newer agent, say). A node has at most one per After, the first
// change being reported at once: later ones come when After has passed
// since the last record, as the file is then (so a heartbeat stream
// flipping digests cannot flood the outbox).
func (t *Tracker) policyRecords(now time.Time, keys []node) []alert.Record {
	var out []alert.Record
	for _, k := range keys {
		s := t.nodes[k]
		base := s.policyBase
		switch {
		case !s.policy.Known() || s.policy == base:
			continue
		case !base.Known(): // the first one heard: nothing to compare with
			if s.policy.Gaps != "" {
				out = append(out, gapRecord(k, s.policy, now))
			}
		case !s.policyAt.IsZero() && now.Sub(s.policyAt) < t.cfg.After:
			continue // reported within After: held
		case s.policy.sameFile(base):
			if s.policy.Gaps != "" {
				out = append(out, gapRecord(k, s.policy, now))
				s.policyAt = now
			}
		default:
			out = append(out, policyRecord(k, base, s.policy, now))
			s.policyAt = now
		}
		s.policyBase = s.policy
		t.baselineLog = append(t.baselineLog, Baseline{Cluster: k.cluster, Node: k.name, Policy: s.policy})
	}
	return out
}

// gapRecord is the audit_policy_gap record of node k's policy p.
func gapRecord(k node, p Policy, now time.Time) alert.Record {
	return alert.Record{
		ID: alert.PipelineID(KindAuditPolicyGap + "\x00" + k.cluster + "\x00" + k.name + "\x00" +
			p.String() + "\x00" + p.Gaps + "\x00" + now.UTC().Format(time.RFC3339Nano)),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.High,
		Body: fmt.Sprintf("The audit policy file on node %s of cluster %s (%s) keeps token requests out of the audit log, "+
			"where tokenwatch cannot see them: %s. Put tokenwatch's rule first.", k.name, k.cluster, p, p.Gaps),
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", KindAuditPolicyGap),
			alert.String("k8s.cluster.name", k.cluster),
			alert.String("k8s.node.name", k.name),
			alert.String("tokenwatch.audit_policy.sha256", p.SHA256),
			alert.String("tokenwatch.audit_policy.gaps", p.Gaps),
		},
	}
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
	gaps := ""
	if is.Gaps != "" {
		attrs = append(attrs, alert.String("tokenwatch.audit_policy.gaps", is.Gaps))
		gaps = " It keeps token requests out of the audit log: " + is.Gaps + "."
	}
	return alert.Record{
		ID: alert.PipelineID(KindAuditPolicyChanged + "\x00" + k.cluster + "\x00" + k.name + "\x00" +
			was.String() + "\x00" + is.String() + "\x00" + now.UTC().Format(time.RFC3339Nano)),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.High,
		Body: fmt.Sprintf("The audit policy file on node %s of cluster %s changed (%s, was %s). "+
			"kube-apiserver applies it when it restarts: a rule above tokenwatch's can hide token requests from it.%s",
			k.name, k.cluster, is, was, gaps),
		Attrs: attrs,
	}
}

// Baseline is a node's audit policy baseline: what its file was at the last
// audit_policy_changed, or when first heard; one whose Policy is not Known
// deletes it. Baselines are kept across restarts, so an edit made while the
// aggregator was down is reported when the node is heard again.
type Baseline struct {
	Cluster, Node string
	Policy        Policy
}

// Baselines returns the changes of baselines since the last call, in the
// order they were made (a later one for the same node replaces an earlier
// one), for the caller to store; RestoreBaselines takes them back.
func (t *Tracker) Baselines() []Baseline {
	out := t.baselineLog
	t.baselineLog = nil
	return out
}

// RestoreBaselines takes back, at now, the baselines stored before a
// restart: a node heard again compares its file with its baseline, and the
// baseline of one not heard again within After+ForgetAfter (when
// ForgetAfter > 0) is dropped, as the node would have been forgotten.
// Baselines of nodes already tracked, or without a policy, are ignored.
func (t *Tracker) RestoreBaselines(now time.Time, bs []Baseline) {
	for _, b := range bs {
		k := node{b.Cluster, b.Node}
		if !b.Policy.Known() || t.nodes[k] != nil {
			continue
		}
		if t.baselines == nil {
			t.baselines = map[node]Policy{}
		}
		t.baselines[k] = b.Policy
	}
	t.restoredAt = now
}

// forgetBaselines drops the restored baselines of nodes not heard within
// After+ForgetAfter of their restoring.
func (t *Tracker) forgetBaselines(now time.Time) {
	if len(t.baselines) == 0 || now.Sub(t.restoredAt) < t.cfg.After+t.cfg.ForgetAfter {
		return
	}
	keys := make([]node, 0, len(t.baselines))
	for k := range t.baselines {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].less(keys[j]) })
	for _, k := range keys {
		t.baselineLog = append(t.baselineLog, Baseline{Cluster: k.cluster, Node: k.name})
	}
	t.baselines = nil
}
