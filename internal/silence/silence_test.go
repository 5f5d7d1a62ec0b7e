package silence

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

var t0 = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)

func at(m float64) time.Time { return t0.Add(time.Duration(m * float64(time.Minute))) }

// agentClock is an agent whose clock is an hour behind the aggregator's.
func agentClock(m float64) time.Time { return at(m).Add(-time.Hour) }

type rec struct {
	Kind, Cluster, Node, Reason string
	For                         int64
}

func short(rs []alert.Record) []rec {
	var out []rec
	for _, r := range rs {
		k, _ := r.Attr("tokenwatch.pipeline.kind")
		c, _ := r.Attr("k8s.cluster.name")
		n, _ := r.Attr("k8s.node.name")
		why, _ := r.Attr("tokenwatch.silence.reason")
		f, _ := r.Attr("tokenwatch.silent_for_seconds")
		out = append(out, rec{k.Str, c.Str, n.Str, why.Str, f.Int})
	}
	return out
}

type step struct {
	at     float64
	heard  []string // "cluster/node" heard at this minute
	growth float64  // agent-clock minute of last growth reported (-1: none)
	forget string
	want   []rec // from Check(at)
}

func TestScenarios(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
	}{
		{"heartbeats stop, then resume", []step{
			{at: 0, heard: []string{"a/n1"}, growth: -1},
			{at: 4.9, growth: -1},
			{at: 5, growth: -1, want: []rec{{"cluster_silent", "a", "n1", ReasonNoHeartbeat, 300}}},
			{at: 6, growth: -1}, // once per silence
			{at: 9, heard: []string{"a/n1"}, growth: -1, want: []rec{{"cluster_resumed", "a", "n1", ReasonNoHeartbeat, 540}}},
			{at: 10, growth: -1},
			{at: 14, growth: -1, want: []rec{{"cluster_silent", "a", "n1", ReasonNoHeartbeat, 300}}}, // a new silence
		}},
		{"audit log stops growing while heartbeats go on", []step{
			{at: 0, heard: []string{"a/n1"}, growth: 0},
			{at: 2, heard: []string{"a/n1"}, growth: 2},
			{at: 4, heard: []string{"a/n1"}, growth: 2},
			{at: 6, heard: []string{"a/n1"}, growth: 2},
			{at: 7, heard: []string{"a/n1"}, growth: 2, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditGrowth, 300}}},
			{at: 8, heard: []string{"a/n1"}, growth: 2},
			{at: 9, heard: []string{"a/n1"}, growth: 8.5, want: []rec{{"cluster_resumed", "a", "n1", ReasonNoAuditGrowth, 420}}},
		}},
		{"one node of two goes silent", []step{
			{at: 0, heard: []string{"a/n1", "a/n2", "b/n1"}, growth: -1},
			{at: 3, heard: []string{"a/n1", "b/n1"}, growth: -1},
			{at: 5, heard: []string{"a/n1", "b/n1"}, growth: -1, want: []rec{{"cluster_silent", "a", "n2", ReasonNoHeartbeat, 300}}},
		}},
		{"forgotten nodes are not tracked", []step{
			{at: 0, heard: []string{"a/replay"}, growth: -1},
			{at: 1, forget: "a/replay", growth: -1},
			{at: 10, growth: -1},
		}},
		{"an old growth value at first sight starts the clock", []step{
			{at: 0, heard: []string{"a/n1"}, growth: -600},
			{at: 4, heard: []string{"a/n1"}, growth: -600},
			{at: 5, heard: []string{"a/n1"}, growth: -600, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditGrowth, 300}}},
		}},
		{"an older growth value after a restart is no growth", []step{
			{at: 0, heard: []string{"a/n1"}, growth: 0},
			{at: 3, heard: []string{"a/n1"}, growth: -5},
			{at: 5, heard: []string{"a/n1"}, growth: -5, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditGrowth, 300}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(Config{After: 5 * time.Minute})
			for _, s := range tt.steps {
				for _, cn := range s.heard {
					g := time.Time{}
					if s.growth != -1 {
						g = agentClock(s.growth)
					}
					c, n, _ := strings.Cut(cn, "/")
					tr.Heard(at(s.at), c, n, g)
				}
				if s.forget != "" {
					c, n, _ := strings.Cut(s.forget, "/")
					tr.Forget(c, n)
				}
				if diff := cmp.Diff(s.want, short(tr.Check(at(s.at)))); diff != "" {
					t.Errorf("Check(%v) (-want +got):\n%s", s.at, diff)
				}
			}
		})
	}
}

func TestRecords(t *testing.T) {
	tr := New(Config{After: 5 * time.Minute})
	tr.Heard(at(0), "prod", "cp-1", time.Time{})
	silent := tr.Check(at(5.5))
	want := []alert.Record{{
		EventName: alert.EventPipeline,
		Time:      at(5.5),
		Severity:  alert.High,
		Body:      "Node cp-1 of cluster prod is silent: no heartbeat from its agent for 5m30s.",
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", "cluster_silent"),
			alert.String("k8s.cluster.name", "prod"),
			alert.String("k8s.node.name", "cp-1"),
			alert.Int("tokenwatch.silent_for_seconds", 330),
			alert.String("tokenwatch.silence.reason", ReasonNoHeartbeat),
		},
	}}
	if diff := cmp.Diff(want, silent, cmpopts.IgnoreFields(alert.Record{}, "ID")); diff != "" {
		t.Errorf("silent (-want +got):\n%s", diff)
	}
	tr.Heard(at(8), "prod", "cp-1", time.Time{})
	resumed := tr.Check(at(8))
	if len(resumed) != 1 || resumed[0].Severity != alert.Low ||
		resumed[0].Body != "Node cp-1 of cluster prod is heard from again after 8m0s of silence (no heartbeat from its agent)." {
		t.Errorf("resumed = %+v", resumed)
	}
	if silent[0].ID == resumed[0].ID || silent[0].ID == "" {
		t.Errorf("IDs %q, %q", silent[0].ID, resumed[0].ID)
	}
	// The same silence seen by a tracker in the same state has the same ID.
	tr2 := New(Config{After: 5 * time.Minute})
	tr2.Heard(at(0), "prod", "cp-1", time.Time{})
	if again := tr2.Check(at(7)); len(again) != 1 || again[0].ID != silent[0].ID {
		t.Errorf("ID not stable: %v vs %s", again, silent[0].ID)
	}
}

func TestOff(t *testing.T) {
	tr := New(Config{})
	tr.Heard(at(0), "a", "n", time.Time{})
	if got := tr.Check(at(1000)); len(got) != 0 {
		t.Errorf("Check with After 0 = %v", got)
	}
}
