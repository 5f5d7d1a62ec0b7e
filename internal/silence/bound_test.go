package silence

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestNodeNamesAreBounded: 5,000 node names claimed for one cluster give at
// most MaxNodesPerCluster tracked nodes, that many cluster_silent records and
// one nodes_refused record per After; other clusters are unaffected; nodes
// silent for ForgetAfter are forgotten, so state does not grow with names
// ever seen.
func TestNodeNamesAreBounded(t *testing.T) {
	const max = 16
	tr := New(Config{After: 5 * time.Minute, MaxNodesPerCluster: max, ForgetAfter: time.Hour})
	joined := 0
	for i := range 5000 {
		if tr.Join(at(0), "a", fmt.Sprintf("n%d", i)) {
			joined++
		}
		tr.Heard(at(0), "a", fmt.Sprintf("n%d", i), time.Time{})
	}
	if joined != max || tr.Nodes() != max {
		t.Fatalf("joined %d, tracked %d, want %d", joined, tr.Nodes(), max)
	}
	if !tr.Join(at(0), "a", "n3") {
		t.Errorf("a tracked node was refused")
	}
	if !tr.Join(at(0), "b", "cp-1") {
		t.Errorf("another cluster's node was refused")
	}
	tr.Heard(at(4), "b", "cp-1", time.Time{})

	recs := tr.Check(at(5))
	got := map[string]int{}
	for _, r := range recs {
		k, _ := r.Attr("tokenwatch.pipeline.kind")
		got[k.Str]++
	}
	if diff := cmp.Diff(map[string]int{"cluster_silent": max, KindNodesRefused: 1}, got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	last := recs[len(recs)-1]
	if n, _ := last.Attr("tokenwatch.nodes.refused"); n.Int != 5000-max {
		t.Errorf("tokenwatch.nodes.refused = %d, want %d", n.Int, 5000-max)
	}
	if names, _ := last.Attr("tokenwatch.nodes.refused_names"); len(names.Strings) != maxRefusedNames || names.Strings[0] != "n16" {
		t.Errorf("tokenwatch.nodes.refused_names = %v, want the first %d refused", names.Strings, maxRefusedNames)
	}

	// More refusals within After wait for the next record.
	tr.Join(at(6), "a", "late")
	if recs := tr.Check(at(6)); len(recs) != 0 {
		t.Errorf("Check(6) = %d records, want none before After has passed", len(recs))
	}
	if recs := tr.Check(at(10)); len(recs) != 2 { // b/cp-1 silent, a refused again
		t.Errorf("Check(10) = %d records, want 2", len(recs))
	}

	// Silent for After+ForgetAfter: forgotten, their places free again.
	tr.Check(at(65))
	if n := tr.Nodes(); n != 1 {
		t.Errorf("after ForgetAfter: %d nodes tracked, want 1 (b/cp-1)", n)
	}
	if !tr.Join(at(66), "a", "new-node") {
		t.Errorf("a new node after the silent ones were forgotten was refused")
	}
}

// TestForgetKeepsHeartbeatingNodes: a node whose audit log stopped growing
// but whose agent heartbeats is never forgotten.
func TestForgetKeepsHeartbeatingNodes(t *testing.T) {
	tr := New(Config{After: 5 * time.Minute, MaxNodesPerCluster: 1, ForgetAfter: time.Minute})
	for m := 0.0; m <= 30; m++ {
		tr.Heard(at(m), "a", "n1", agentClock(0))
		tr.Check(at(m))
	}
	if tr.Join(at(30), "a", "n2") {
		t.Errorf("n2 joined: the heartbeating n1 was forgotten")
	}
}
