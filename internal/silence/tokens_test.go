package silence

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// tokenStep is a minute of a cluster's life: heartbeats with their growth
// (each node's log grows at every heartbeat), the clusters whose agents
// delivered token requests, a node forgotten, and what Check says.
type tokenStep struct {
	at     float64
	heard  []string // "cluster/node", log grown at this minute
	stale  []string // "cluster/node", heartbeat without growth
	tokens []string // clusters with token requests at this minute
	forget string
	want   []rec
}

func TestTokenRequestsScenarios(t *testing.T) {
	const after = 60 // minutes
	tests := []struct {
		name  string
		steps []tokenStep
	}{
		{"token requests keep coming", []tokenStep{
			{at: 0, heard: []string{"a/n1"}},
			{at: 50, heard: []string{"a/n1"}, tokens: []string{"a"}},
			{at: 100, heard: []string{"a/n1"}, tokens: []string{"a"}},
			{at: 150, heard: []string{"a/n1"}},
		}},
		{"none since the cluster joined, then they come", []tokenStep{
			{at: 0, heard: []string{"a/n1", "a/n2"}},
			{at: 4, heard: []string{"a/n1", "a/n2"}},
			{at: 59, heard: []string{"a/n1", "a/n2"}},
			{at: 60, heard: []string{"a/n1", "a/n2"}, want: []rec{{"cluster_silent", "a", "", ReasonNoTokenRequests, 3600}}},
			{at: 61, heard: []string{"a/n1", "a/n2"}}, // once per silence
			{at: 90, heard: []string{"a/n1", "a/n2"}, tokens: []string{"a"}, want: []rec{{"cluster_resumed", "a", "", ReasonNoTokenRequests, 5400}}},
			{at: 149, heard: []string{"a/n1", "a/n2"}},
			{at: 150, heard: []string{"a/n1", "a/n2"}, want: []rec{{"cluster_silent", "a", "", ReasonNoTokenRequests, 3600}}}, // a new silence
		}},
		{"one cluster of two stops logging them", []tokenStep{
			{at: 0, heard: []string{"a/n1", "b/n1"}, tokens: []string{"a", "b"}},
			{at: 30, heard: []string{"a/n1", "b/n1"}, tokens: []string{"b"}},
			{at: 59, heard: []string{"a/n1", "b/n1"}, tokens: []string{"b"}},
			{at: 60, heard: []string{"a/n1", "b/n1"}, want: []rec{{"cluster_silent", "a", "", ReasonNoTokenRequests, 3600}}},
		}},
		{"a node of a silent cluster: its own record, not this one", []tokenStep{
			{at: 0, heard: []string{"a/n1"}},
			{at: 1, stale: []string{"a/n1"}},
			{at: 4, stale: []string{"a/n1"}},
			{at: 5, stale: []string{"a/n1"}, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditGrowth, 300}}},
			{at: 70, stale: []string{"a/n1"}},
			// The log grows again, without token requests: both are said.
			{at: 80, heard: []string{"a/n1"}, want: []rec{
				{"cluster_resumed", "a", "n1", ReasonNoAuditGrowth, 4800},
				{"cluster_silent", "a", "", ReasonNoTokenRequests, 4800},
			}},
		}},
		{"one node of two growing is enough", []tokenStep{
			{at: 0, heard: []string{"a/n1", "a/n2"}},
			{at: 1, heard: []string{"a/n1"}, stale: []string{"a/n2"}},
			{at: 5, heard: []string{"a/n1"}, stale: []string{"a/n2"}, want: []rec{{"cluster_silent", "a", "n2", ReasonNoAuditGrowth, 300}}},
			{at: 60, heard: []string{"a/n1"}, stale: []string{"a/n2"}, want: []rec{{"cluster_silent", "a", "", ReasonNoTokenRequests, 3600}}},
		}},
		{"a cluster without tracked nodes is not watched", []tokenStep{
			{at: 0, tokens: []string{"a"}},
			{at: 100},
		}},
		{"forgetting its last node ends a cluster's wait", []tokenStep{
			{at: 0, heard: []string{"a/n1"}},
			{at: 30, forget: "a/n1"},
			{at: 31, heard: []string{"a/n1"}}, // tracked anew: the wait starts again
			{at: 90, heard: []string{"a/n1"}},
			{at: 91, heard: []string{"a/n1"}, want: []rec{{"cluster_silent", "a", "", ReasonNoTokenRequests, 3600}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(Config{After: 5 * time.Minute, TokenRequestsAfter: after * time.Minute})
			grown := map[string]float64{}
			for _, s := range tt.steps {
				for _, cn := range s.heard {
					grown[cn] = s.at
				}
				for _, cn := range append(append([]string(nil), s.heard...), s.stale...) {
					c, n, _ := strings.Cut(cn, "/")
					tr.HeardBeat(at(s.at), c, n, Beat{LastGrowth: agentClock(grown[cn]), File: FilePresent})
				}
				for _, c := range s.tokens {
					tr.TokenRequests(at(s.at), c)
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

func TestTokenRequestsRecords(t *testing.T) {
	cfg := Config{After: 5 * time.Minute, TokenRequestsAfter: 3 * time.Hour}
	tr := New(cfg)
	tr.Heard(at(0), "prod", "cp-1", agentClock(0))
	tr.Heard(at(200), "prod", "cp-1", agentClock(200))
	silent := tr.Check(at(200))
	want := []alert.Record{{
		EventName: alert.EventPipeline,
		Time:      at(200),
		Severity:  alert.High,
		Body: "Cluster prod is silent: its audit logs grow, but none has logged a token request " +
			"(create on serviceaccounts/token) for 3h20m0s; its audit policy may not log them (or the apiserver writes another format than --audit-log-format=json), and tokenwatch cannot see them.",
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", "cluster_silent"),
			alert.String("k8s.cluster.name", "prod"),
			alert.Int("tokenwatch.silent_for_seconds", 12000),
			alert.String("tokenwatch.silence.reason", ReasonNoTokenRequests),
		},
	}}
	if diff := cmp.Diff(want, silent, cmpopts.IgnoreFields(alert.Record{}, "ID")); diff != "" {
		t.Errorf("silent (-want +got):\n%s", diff)
	}
	tr.TokenRequests(at(210), "prod")
	tr.Heard(at(211), "prod", "cp-1", agentClock(211))
	resumed := tr.Check(at(211))
	if len(resumed) != 1 || resumed[0].Severity != alert.Low ||
		resumed[0].Body != "Cluster prod logs token requests again after 3h30m0s without any." {
		t.Errorf("resumed = %+v", resumed)
	}
	if silent[0].ID == resumed[0].ID || silent[0].ID == "" {
		t.Errorf("IDs %q, %q", silent[0].ID, resumed[0].ID)
	}
	// The same silence seen by a tracker in the same state has the same ID.
	tr2 := New(cfg)
	tr2.Heard(at(0), "prod", "cp-1", agentClock(0))
	tr2.Heard(at(190), "prod", "cp-1", agentClock(190))
	if again := tr2.Check(at(190)); len(again) != 1 || again[0].ID != silent[0].ID {
		t.Errorf("ID not stable: %v vs %s", again, silent[0].ID)
	}
}

func TestTokenRequestsOff(t *testing.T) {
	tr := New(Config{After: 5 * time.Minute})
	for m := 0.0; m <= 600; m += 1 {
		tr.Heard(at(m), "a", "n", agentClock(m))
		if got := tr.Check(at(m)); len(got) != 0 {
			t.Fatalf("Check(%v) with TokenRequestsAfter 0 = %v", m, short(got))
		}
	}
}
