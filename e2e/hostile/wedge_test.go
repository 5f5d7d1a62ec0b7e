package hostile

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/auditwrite"
	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// wedgeEvents is the backlog's size in token-create audit events (two per
// request: RequestReceived and ResponseComplete). At wedgeLimits' rate
// (2,000 events/s after a burst of 20,000: issue 12's figures, set
// explicitly so that retuned defaults do not undo the throttling) every
// aggregator started below throttles the agent.
const wedgeEvents = 90_000

const wedgeLimits = `limits:
  events_per_second: 2000
  event_burst: 20000
`

// TestWedgeAggregatorGoneWhileThrottled is issue 12's point 3: an agent
// with a backlog that the aggregator's rate limit holds back must notice
// when that aggregator dies (SIGKILL) or stops (SIGTERM), say so, reconnect
// to its successor on the same port and state, and deliver every alert; and
// a SIGTERM to the agent while the aggregator is stalled (SIGSTOP) or gone
// must stop the agent. Before the fix the agent hung for good: no reconnect,
// no log line, connected stayed 1, SIGTERM ignored.
func TestWedgeAggregatorGoneWhileThrottled(t *testing.T) {
	b := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditDir := filepath.Join(dir, "audit")
	if err := os.MkdirAll(auditDir, 0o700); err != nil {
		t.Fatal(err)
	}
	auditLog := filepath.Join(auditDir, "audit.log")
	// The whole backlog is written before the agent starts; no rotation.
	res, err := auditwrite.Run(context.Background(), auditwrite.Config{Path: auditLog, Mode: auditwrite.Lumberjack,
		MaxSizeMB: 1024, Events: wedgeEvents, AlertEvery: 1, Cluster: "c1"})
	if err != nil {
		t.Fatalf("write the backlog: %v", err)
	}
	t.Logf("backlog: %d requests that must alert, %.1f MB", len(res.Wants), float64(res.Bytes)/1e6)

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Config = harness.WriteFile(t, dir, "aggregator.yaml", wedgeLimits)
	agg.Start(t)
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: auditLog,
		Aggregator: agg.Listen, StateDir: filepath.Join(dir, "agent-state"),
		Metrics: harness.Addr(harness.FreePort(t)), StartAt: "beginning"}
	agent.Start(t)

	const bound = 60 * time.Second // failure bounds, not measurements
	throttled := func(why string) {
		t.Helper()
		// A few held-back messages: the agent is past the burst and its
		// stream is full of batches waiting for the rate.
		if err := waitMetric(agg.Proc, agg.Metrics, "tokenwatch_aggregator_throttled_messages_total", 3, bound); err != nil {
			t.Fatalf("%s: the aggregator never throttled the agent: %v", why, err)
		}
	}
	var kills int
	var sinkAtKill int // token records received when the last killed aggregator was gone
	killAggregator := func(why string) {
		t.Helper()
		t.Logf("%s: SIGKILL aggregator (pid %d)", why, agg.Proc.Pid())
		if err := agg.Proc.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill aggregator: %v", err)
		}
		<-agg.Proc.Done()
		kills++
		sinkAtKill = len(harness.ByEvent(sink.Records(), harness.EventTokenRequest))
	}
	// streamEnded waits for the agent's n-th "stream ended" line since it
	// started: the session noticed the aggregator is gone.
	streamEnded := func(why string, n int) {
		t.Helper()
		if err := waitLogged(agent.Proc, "aggregator stream ended; reconnecting", n, bound); err != nil {
			t.Fatalf("%s: the agent did not notice (wedged?): %v\nagent metrics: %v", why, err,
				harness.MetricLines(agent.Metrics, "tokenwatch_agent_connected"))
		}
		if v, err := metricValue(agent.Metrics, "tokenwatch_agent_connected"); err != nil || v != 0 {
			t.Errorf("%s: tokenwatch_agent_connected = %v (%v) with no aggregator, want 0", why, v, err)
		}
	}
	reconnected := func(why string, n int) {
		t.Helper()
		if err := waitLogged(agent.Proc, "reconnected to aggregator", n, bound); err != nil {
			t.Fatalf("%s: the agent did not reconnect: %v", why, err)
		}
	}
	stopAgent := func(why string) {
		t.Helper()
		began := time.Now()
		if err := agent.Proc.Stop(bound); err != nil {
			t.Fatalf("%s: agent did not stop on SIGTERM: %v", why, err)
		}
		t.Logf("%s: agent stopped %v after SIGTERM (exit %d)", why, time.Since(began).Round(100*time.Millisecond), agent.Proc.ExitCode())
	}

	// 1. SIGKILL while throttled.
	throttled("SIGKILL")
	killAggregator("throttled")
	streamEnded("after the aggregator SIGKILL", 1)
	agg.Start(t) // same port and state
	reconnected("after the aggregator SIGKILL", 1)

	// 2. SIGTERM while throttled.
	throttled("SIGTERM")
	ended := countLogged(agent.Proc, "aggregator stream ended; reconnecting")
	t.Logf("throttled: SIGTERM aggregator (pid %d)", agg.Proc.Pid())
	if err := agg.Proc.Stop(bound); err != nil {
		t.Errorf("aggregator did not stop cleanly on SIGTERM: %v", err)
	}
	streamEnded("after the aggregator SIGTERM", ended+1)
	agg.Start(t)
	reconnected("after the aggregator SIGTERM", 2)

	// 3. SIGTERM to the agent while the aggregator is stalled.
	t.Logf("SIGSTOP aggregator (pid %d)", agg.Proc.Pid())
	if err := agg.Proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopAgent("aggregator stalled")
	if err := agg.Proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	agent.Start(t) // resumes from its checkpoint; waits for /readyz

	// 4. SIGTERM to the agent while the aggregator is gone. The restarted
	// agent may have been refused once first (ALREADY_EXISTS: the
	// resumed aggregator still held its predecessor's stream), a "stream
	// ended" line of its own: count from the kill.
	ended = countLogged(agent.Proc, "aggregator stream ended; reconnecting")
	killAggregator("agent streaming")
	streamEnded("after the aggregator SIGKILL", ended+1)
	stopAgent("aggregator gone")

	agg.Start(t)
	agent.Start(t)
	keys := harness.KeysOf(res.Wants)
	if !sink.WaitProgress(bound, 10*time.Minute, func(r []harness.Record) bool {
		return harness.CountDistinct(r, keys) == len(keys)
	}) {
		t.Logf("alerts stopped arriving (%v without a record) before the expected set was complete", bound)
	}
	sink.Quiet(4*time.Second, 30*time.Second)
	for _, l := range harness.MetricLines(agent.Metrics, "tokenwatch_agent_") {
		t.Logf("agent metric %s", l)
	}
	for _, l := range harness.MetricLines(agg.Metrics, "tokenwatch_aggregator_throttled") {
		t.Logf("aggregator metric %s", l)
	}

	recs := sink.Records()
	r := harness.Compare(recs, res.Wants)
	// The contract's one exception: records in flight at an aggregator
	// SIGKILL may be exported twice; their first copy arrived before the
	// last kill.
	firstAt := map[harness.Key]int{}
	n := 0
	for _, rec := range harness.ByEvent(recs, harness.EventTokenRequest) {
		if _, ok := firstAt[harness.RecordKey(rec)]; !ok {
			firstAt[harness.RecordKey(rec)] = n
		}
		n++
	}
	var inFlight, bad int
	for k, extra := range r.Duplicates {
		if firstAt[k] < sinkAtKill && extra <= kills {
			inFlight++
		} else {
			bad++
		}
	}
	t.Logf("scenario wedge: expected %d, received %d distinct; missing %d, unexpected %d; doubled %d (in flight at an aggregator SIGKILL: %d, other: %d)",
		r.Want, r.Got-r.DupeRecords, len(r.Missing), len(r.Unexpected), len(r.Duplicates), inFlight, bad)
	if bad > 0 {
		t.Errorf("%d requests alerted more than once outside the aggregator-SIGKILL exception", bad)
	}
	r.Duplicates = nil
	harness.Report(t, "wedge", r)

	stopAgent("end")
	if err := agg.Proc.Stop(bound); err != nil {
		t.Errorf("aggregator did not stop cleanly on SIGTERM: %v", err)
	}
}

// countLogged counts substr in p's stderr so far.
func countLogged(p *harness.Proc, substr string) int {
	_, errOut := p.Output()
	return bytes.Count(errOut, []byte(substr))
}

// waitLogged waits until p's stderr holds substr n times, p exits, or
// timeout passes.
func waitLogged(p *harness.Proc, substr string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if countLogged(p, substr) >= n {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited before logging %q %d times", p.Name, substr, n)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s logged %q %d times within %v, want %d", p.Name, substr, countLogged(p, substr), timeout, n)
		}
		select {
		case <-p.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metricValue returns the value of the unlabelled sample name at addr.
func metricValue(addr, name string) (float64, error) {
	for _, l := range harness.MetricLines(addr, name) {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no sample %s at %s", name, addr)
}

// waitMetric waits until the sample name at addr reaches min, p exits, or
// timeout passes.
func waitMetric(p *harness.Proc, addr, name string, min float64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		v, err := metricValue(addr, name)
		if err == nil && v >= min {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited", p.Name)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s = %v (%v) after %v, want at least %v", name, v, err, timeout, min)
		}
		select {
		case <-p.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}
