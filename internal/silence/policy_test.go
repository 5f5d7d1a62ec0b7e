package silence

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

func TestAuditPolicyChanges(t *testing.T) {
	a, b := Policy{SHA256: "aaaa"}, Policy{SHA256: "bbbb"}
	gone := Policy{Err: "open /etc/kubernetes/audit-policy.yaml: no such file or directory"}
	type change struct{ Node, Was, Is string }
	type beat struct {
		node   string
		policy Policy
	}
	tests := []struct {
		name  string
		beats [][]beat // per minute
		want  [][]change
	}{
		{"unchanged", [][]beat{{{"n1", a}}, {{"n1", a}}, {{"n1", a}}}, [][]change{nil, nil, nil}},
		{"changed, then back: at most one record per silence.after", [][]beat{{{"n1", a}}, {{"n1", b}}, {{"n1", b}}, {{"n1", a}}, {{"n1", a}}, {{"n1", a}}, {{"n1", a}}},
			[][]change{nil, {{"n1", "aaaa", "bbbb"}}, nil, nil, nil, nil, {{"n1", "bbbb", "aaaa"}}}},
		{"flipping within silence.after: held, then the file as it is", [][]beat{{{"n1", a}}, {{"n1", b}}, {{"n1", a}}, {{"n1", b}}, {{"n1", b}}, {{"n1", b}}, {{"n1", b}}},
			[][]change{nil, {{"n1", "aaaa", "bbbb"}}, nil, nil, nil, nil, nil}},
		{"not watched, then watched: the first is the baseline", [][]beat{{{"n1", Policy{}}}, {{"n1", a}}, {{"n1", a}}},
			[][]change{nil, nil, nil}},
		{"a heartbeat without it changes nothing", [][]beat{{{"n1", a}}, {{"n1", Policy{}}}, {{"n1", a}}},
			[][]change{nil, nil, nil}},
		{"unreadable, then readable again", [][]beat{{{"n1", a}}, {{"n1", gone}}, {{"n1", a}}, {{"n1", a}}, {{"n1", a}}, {{"n1", a}}, {{"n1", a}}},
			[][]change{nil, {{"n1", "aaaa", ""}}, nil, nil, nil, nil, {{"n1", "", "aaaa"}}}},
		{"two changes between checks: one record", [][]beat{{{"n1", a}}, {{"n1", gone}, {"n1", b}}},
			[][]change{nil, {{"n1", "aaaa", "bbbb"}}}},
		{"each node has its own", [][]beat{{{"n1", a}, {"n2", b}}, {{"n1", a}, {"n2", a}}},
			[][]change{nil, {{"n2", "bbbb", "aaaa"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(Config{After: 5 * time.Minute})
			for m, beats := range tt.beats {
				for _, hb := range beats {
					tr.HeardBeat(at(float64(m)), "prod", hb.node, Beat{LastGrowth: agentClock(float64(m)), File: FilePresent, Policy: hb.policy})
				}
				var got []change
				for _, r := range tr.Check(at(float64(m))) {
					if k, _ := r.Attr("tokenwatch.pipeline.kind"); k.Str != KindAuditPolicyChanged {
						continue
					}
					n, _ := r.Attr("k8s.node.name")
					was, _ := r.Attr("tokenwatch.audit_policy.previous_sha256")
					is, _ := r.Attr("tokenwatch.audit_policy.sha256")
					got = append(got, change{n.Str, was.Str, is.Str})
				}
				if diff := cmp.Diff(tt.want[m], got); diff != "" {
					t.Errorf("minute %d (-want +got):\n%s", m, diff)
				}
			}
		})
	}
}

func TestAuditPolicyRecord(t *testing.T) {
	tr := New(Config{After: 5 * time.Minute})
	tr.HeardBeat(at(0), "prod", "cp-1", Beat{Policy: Policy{SHA256: "aaaa"}})
	tr.Check(at(0))
	tr.HeardBeat(at(1), "prod", "cp-1", Beat{Policy: Policy{Err: strings.Repeat("e", 300)}})
	recs := tr.Check(at(1))
	if len(recs) != 1 {
		t.Fatalf("records = %v, want one", short(recs))
	}
	r := recs[0]
	if r.Severity.Number != 17 || r.ID == "" {
		t.Errorf("severity %v, ID %q: want high and an ID", r.Severity, r.ID)
	}
	want := "The audit policy file on node cp-1 of cluster prod changed (unreadable: " + strings.Repeat("e", 256) +
		"..., was sha256 aaaa). kube-apiserver applies it when it restarts: a rule above tokenwatch's can hide token requests from it."
	if r.Body != want {
		t.Errorf("body = %q\nwant %q", r.Body, want)
	}
	if e, ok := r.Attr("tokenwatch.audit_policy.error"); !ok || len(e.Str) != 259 {
		t.Errorf("error attribute = %q, want the error bounded to 256 bytes and an ellipsis", e.Str)
	}
	// A digest that is not one (a misbehaving agent's megabytes) is bounded.
	tr.HeardBeat(at(7), "prod", "cp-1", Beat{Policy: Policy{SHA256: strings.Repeat("f", 1<<20)}})
	recs = tr.Check(at(7)) // silence.after since the last record
	if len(recs) != 1 {
		t.Fatalf("records = %v, want one", short(recs))
	}
	if d, _ := recs[0].Attr("tokenwatch.audit_policy.sha256"); len(d.Str) != 67 || len(recs[0].Body) > 1024 {
		t.Errorf("digest attribute of %d bytes, body of %d: want 64 bytes and an ellipsis, a short body", len(d.Str), len(recs[0].Body))
	}
}

// TestAuditPolicyBaselines: the tracker hands out each baseline it takes
// (first heard, then at each record) and each it drops (a forgotten node),
// and a tracker given them back reports a file changed meanwhile at once.
func TestAuditPolicyBaselines(t *testing.T) {
	a, b, c := Policy{SHA256: "aaaa"}, Policy{SHA256: "bbbb"}, Policy{SHA256: "cccc"}
	cfg := Config{After: 5 * time.Minute, ForgetAfter: 60 * time.Minute}
	tr := New(cfg)
	tr.HeardBeat(at(0), "prod", "cp-1", Beat{Policy: a})
	tr.HeardBeat(at(0), "prod", "cp-2", Beat{Policy: a})
	tr.HeardBeat(at(0), "prod", "cp-3", Beat{}) // not watched: no baseline
	tr.Check(at(0))
	want := []Baseline{{"prod", "cp-1", a}, {"prod", "cp-2", a}}
	if diff := cmp.Diff(want, tr.Baselines()); diff != "" {
		t.Fatalf("first heard (-want +got):\n%s", diff)
	}
	if got := tr.Baselines(); got != nil {
		t.Fatalf("handed out twice: %v", got)
	}
	tr.HeardBeat(at(1), "prod", "cp-1", Beat{Policy: b})
	tr.Check(at(1))
	if diff := cmp.Diff([]Baseline{{"prod", "cp-1", b}}, tr.Baselines()); diff != "" {
		t.Fatalf("after a record (-want +got):\n%s", diff)
	}

	// A restart: cp-1 was edited while the aggregator was down, cp-2 was not,
	// cp-9 is never heard again.
	stored := []Baseline{{"prod", "cp-1", b}, {"prod", "cp-2", a}, {"prod", "cp-9", a}, {"prod", "cp-bad", Policy{}}}
	tr = New(cfg)
	tr.RestoreBaselines(at(10), stored)
	tr.Join(at(10), "prod", "cp-1")
	tr.HeardBeat(at(10), "prod", "cp-1", Beat{Policy: c})
	tr.HeardBeat(at(10), "prod", "cp-2", Beat{Policy: a})
	var got []string
	for _, r := range tr.Check(at(10)) {
		n, _ := r.Attr("k8s.node.name")
		was, _ := r.Attr("tokenwatch.audit_policy.previous_sha256")
		got = append(got, n.Str+" "+was.Str)
	}
	if diff := cmp.Diff([]string{"cp-1 bbbb"}, got); diff != "" {
		t.Errorf("records after the restart (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Baseline{{"prod", "cp-1", c}}, tr.Baselines()); diff != "" {
		t.Errorf("baselines after the restart (-want +got):\n%s", diff)
	}
	// cp-9's restored baseline goes After+ForgetAfter after the restart;
	// cp-2's, heard then, when cp-2 itself is forgotten (silent since 10).
	tr.HeardBeat(at(74), "prod", "cp-1", Beat{Policy: c})
	tr.Check(at(74))
	if got := tr.Baselines(); got != nil {
		t.Errorf("baselines dropped before After+ForgetAfter: %v", got)
	}
	tr.HeardBeat(at(75), "prod", "cp-1", Beat{Policy: c})
	tr.Check(at(75))
	want = []Baseline{{Cluster: "prod", Node: "cp-9"}, {Cluster: "prod", Node: "cp-2"}}
	if diff := cmp.Diff(want, tr.Baselines()); diff != "" {
		t.Errorf("nodes not heard and forgotten (-want +got):\n%s", diff)
	}
}

// TestAuditPolicyGaps: a policy that keeps token requests out of the log
// is reported when first heard (audit_policy_gap), not again for the same
// file after a restart, with its gaps in a change record, and again when
// the agent reads other gaps in the same file.
func TestAuditPolicyGaps(t *testing.T) {
	const hides = "rule 1 (level None) hides token requests by users mallory"
	kinds := func(recs []alert.Record) []string {
		var out []string
		for _, r := range recs {
			k, _ := r.Attr("tokenwatch.pipeline.kind")
			g, _ := r.Attr("tokenwatch.audit_policy.gaps")
			out = append(out, k.Str+" "+g.Str)
		}
		return out
	}
	cfg := Config{After: 5 * time.Minute}
	tr := New(cfg)
	tr.HeardBeat(at(0), "prod", "cp-1", Beat{Policy: Policy{SHA256: "aaaa", Gaps: hides}})
	tr.HeardBeat(at(0), "prod", "cp-2", Beat{Policy: Policy{SHA256: "bbbb"}})
	recs := tr.Check(at(0))
	if diff := cmp.Diff([]string{KindAuditPolicyGap + " " + hides}, kinds(recs)); diff != "" {
		t.Fatalf("first heard (-want +got):\n%s", diff)
	}
	if n, _ := recs[0].Attr("k8s.node.name"); n.Str != "cp-1" || recs[0].Severity.Number != 17 ||
		!strings.Contains(recs[0].Body, "keeps token requests out of the audit log") {
		t.Errorf("gap record %+v", recs[0])
	}
	// The first change of cp-2 is reported at once, with its gaps.
	tr.HeardBeat(at(1), "prod", "cp-2", Beat{Policy: Policy{SHA256: "cccc", Gaps: hides}})
	if diff := cmp.Diff([]string{KindAuditPolicyChanged + " " + hides}, kinds(tr.Check(at(1)))); diff != "" {
		t.Errorf("change (-want +got):\n%s", diff)
	}
	// A restart: the same files say nothing more.
	stored := tr.Baselines()
	tr = New(cfg)
	tr.RestoreBaselines(at(2), stored)
	tr.HeardBeat(at(2), "prod", "cp-1", Beat{Policy: Policy{SHA256: "aaaa", Gaps: hides}})
	tr.HeardBeat(at(2), "prod", "cp-2", Beat{Policy: Policy{SHA256: "cccc", Gaps: hides}})
	if recs := tr.Check(at(2)); len(recs) != 0 {
		t.Errorf("after a restart: %q, want nothing", kinds(recs))
	}
	// The same file read with other gaps (a newer agent) is reported, and
	// read without any is not.
	tr.HeardBeat(at(3), "prod", "cp-1", Beat{Policy: Policy{SHA256: "aaaa", Gaps: "rule 2 (level None) hides every token request"}})
	tr.HeardBeat(at(3), "prod", "cp-2", Beat{Policy: Policy{SHA256: "cccc"}})
	if diff := cmp.Diff([]string{KindAuditPolicyGap + " rule 2 (level None) hides every token request"}, kinds(tr.Check(at(3)))); diff != "" {
		t.Errorf("same file, other gaps (-want +got):\n%s", diff)
	}
}
