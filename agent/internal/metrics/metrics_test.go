package metrics

import (
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/follow"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	a := New(Sources{
		Follow: func() follow.Stats { return follow.Stats{Lines: 42, Rotations: 3, LinesTooLong: 1, Behind: 7} },
		Send: func() sender.Stats {
			return sender.Stats{EventsSent: 5, EventsAcked: 4, Reconnects: 2, Connected: true}
		},
	})
	a.Candidates.Add(9)
	a.Losses.WithLabelValues("rotated_file_gone").Inc()
	var ready atomic.Bool
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	readyErr := func() error {
		if ready.Load() {
			return nil
		}
		return errors.New("not connected to the aggregator")
	}
	go func() { errc <- ServeListener(ctx, lis, a.Handler(readyErr)) }()
	base := "http://" + lis.Addr().String()

	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics status %d", code)
	}
	for _, want := range []string{
		"tokenwatch_agent_lines_read_total 42",
		"tokenwatch_agent_candidate_lines_total 9",
		"tokenwatch_agent_events_sent_total 5",
		"tokenwatch_agent_events_acked_total 4",
		"tokenwatch_agent_behind_bytes 7",
		"tokenwatch_agent_rotations_total 3",
		"tokenwatch_agent_lines_too_long_total 1",
		"tokenwatch_agent_reconnects_total 2",
		`tokenwatch_agent_losses_total{reason="rotated_file_gone"} 1`,
		"tokenwatch_agent_connected 1",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(body, "tokenwatch_build_info{") || !strings.Contains(body, `program="agent"`) {
		t.Errorf("/metrics lacks tokenwatch_build_info{program=\"agent\",...}")
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz status %d, want 200", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before connecting: status %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when connected: status %d, want 200", code)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("ServeListener = %v, want nil after its context ends", err)
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestAuditPolicyState: one of the four states is 1, read at each scrape;
// without a watched file it is unwatched.
func TestAuditPolicyState(t *testing.T) {
	states := func(a *Agent) map[string]float64 {
		t.Helper()
		mfs, err := a.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "tokenwatch_agent_audit_policy_state" {
				continue
			}
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
		return out
	}
	want := func(cur string) map[string]float64 {
		m := map[string]float64{PolicyUnwatched: 0, PolicyLogged: 0, PolicyHides: 0, PolicyUnread: 0}
		m[cur] = 1
		return m
	}
	if got := states(New(Sources{})); !maps.Equal(got, want(PolicyUnwatched)) {
		t.Errorf("without a watched file: %v", got)
	}
	cur := PolicyLogged
	a := New(Sources{AuditPolicy: func() string { return cur }})
	for _, s := range []string{PolicyLogged, PolicyHides, PolicyUnread} {
		cur = s
		if got := states(a); !maps.Equal(got, want(s)) {
			t.Errorf("%s: %v", s, got)
		}
	}
}

// TestAuditLogJSON: the gauge follows its source at each scrape and is
// absent without one (a replay).
func TestAuditLogJSON(t *testing.T) {
	value := func(a *Agent) (float64, bool) {
		t.Helper()
		mfs, err := a.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "tokenwatch_agent_audit_log_json" {
				return mf.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	if _, ok := value(New(Sources{})); ok {
		t.Error("tokenwatch_agent_audit_log_json without a source")
	}
	json := true
	a := New(Sources{AuditLogJSON: func() bool { return json }})
	for _, j := range []bool{true, false, true} {
		json = j
		want := 0.0
		if j {
			want = 1
		}
		if got, ok := value(a); !ok || got != want {
			t.Errorf("json=%v: gauge %v (present %v), want %v", j, got, ok, want)
		}
	}
}
