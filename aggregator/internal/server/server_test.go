package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/export"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/ingest"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 30 * time.Second // a hung test fails instead of timing out the suite

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// record is one exported OTLP log record, attributes flattened to strings.
type record struct {
	EventName string
	Severity  string
	Body      string
	Attrs     map[string]string
}

// sink collects the stdout OTLP JSON lines and signals each write.
type sink struct {
	t      *testing.T
	mu     sync.Mutex
	buf    bytes.Buffer
	recs   []record
	notify chan struct{}
}

func newSink(t *testing.T) *sink { return &sink{t: t, notify: make(chan struct{}, 1)} }

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.buf.Write(p)
	for {
		line, err := s.buf.ReadBytes('\n')
		if err != nil {
			// Keep the partial line for the next write.
			rest := append([]byte(nil), line...)
			s.buf.Reset()
			s.buf.Write(rest)
			break
		}
		var req collogspb.ExportLogsServiceRequest
		if err := protojson.Unmarshal(line, &req); err != nil {
			s.t.Errorf("stdout line is not OTLP JSON: %v: %s", err, line)
			continue
		}
		for _, rl := range req.GetResourceLogs() {
			for _, sl := range rl.GetScopeLogs() {
				for _, lr := range sl.GetLogRecords() {
					r := record{EventName: lr.GetEventName(), Severity: lr.GetSeverityText(), Body: lr.GetBody().GetStringValue(), Attrs: map[string]string{}}
					for _, kv := range lr.GetAttributes() {
						if _, dup := r.Attrs[kv.GetKey()]; dup {
							s.t.Errorf("%s record: attribute %q twice", r.EventName, kv.GetKey())
						}
						r.Attrs[kv.GetKey()] = valueString(kv.GetValue())
					}
					s.recs = append(s.recs, r)
				}
			}
		}
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func valueString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, valueString(e))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprint(v)
}

func (s *sink) records() []record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record(nil), s.recs...)
}

// waitFor waits until cond holds for the records exported so far.
func (s *sink) waitFor(t *testing.T, what string, cond func([]record) bool) []record {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		if recs := s.records(); cond(recs) {
			return recs
		}
		select {
		case <-s.notify:
		case <-deadline:
			t.Fatalf("waiting for %s: got %d records: %v", what, len(s.records()), s.records())
		}
	}
}

// logs is a slog handler that signals every record whose message is waited for.
type logs struct {
	mu      sync.Mutex
	msgs    []string
	notify  chan struct{}
	handler slog.Handler
}

func newLogs() *logs {
	return &logs{notify: make(chan struct{}, 1), handler: slog.NewTextHandler(io.Discard, nil)}
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// waitLog waits until a message with prefix has been logged n times.
func (l *logs) waitLog(t *testing.T, prefix string, n int) {
	t.Helper()
	deadline := time.After(waitLimit)
	for l.count(prefix) < n {
		select {
		case <-l.notify:
		case <-deadline:
			t.Fatalf("waiting for log %q x%d", prefix, n)
		}
	}
}

// aggregator is a running server.Run.
type aggregator struct {
	addr, metrics string
	out           *sink
	logs          *logs
	cancel        context.CancelFunc
	done          chan error
}

type setup struct {
	stateDir   string
	configFile string
	clk        *clock
}

func newSetup(t *testing.T) *setup {
	return &setup{stateDir: t.TempDir(), clk: &clock{t: time.Date(2026, 11, 26, 23, 10, 0, 0, time.UTC)}}
}

func (s *setup) start(t *testing.T) *aggregator {
	t.Helper()
	a := &aggregator{out: newSink(t), logs: newLogs(), done: make(chan error, 1)}
	started := make(chan struct{})
	c := Config{
		Listen: "127.0.0.1:0", Insecure: true, StateDir: s.stateDir, ConfigFile: s.configFile,
		MetricsAddr: "127.0.0.1:0",
		Logger:      slog.New(a.logs), Stdout: a.out,
		Getenv:       func(string) string { return "" },
		Now:          s.clk.Now,
		TickInterval: 2 * time.Millisecond,
		ConfigPoll:   20 * time.Millisecond,
		Started: func(g, m string) {
			a.addr, a.metrics = g, m
			close(started)
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- Run(ctx, c) }()
	select {
	case <-started:
	case err := <-a.done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() { a.stop(t) })
	return a
}

// stop shuts the aggregator down and checks it stopped cleanly.
func (a *aggregator) stop(t *testing.T) {
	t.Helper()
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(ShutdownTimeout + 2*time.Second):
		t.Fatal("Run did not return within the shutdown budget")
	}
}

// agent is a test client: one stream.
type agent struct {
	conn *grpc.ClientConn
	st   tokenwatchv1.AuditStreamService_StreamClient
	seq  uint64
	// watches are the WatchUpdates received so far.
	watches []*tokenwatchv1.WatchUpdate
}

// dial connects an agent that declares lineage, as the current agent does.
func dial(t *testing.T, addr, cluster, node string, replay bool) *agent {
	t.Helper()
	return dialFeatures(t, addr, cluster, node, replay, ingest.FeatureLineage)
}

// dialFeatures connects an agent that declares features in its Hello.
func dialFeatures(t *testing.T, addr, cluster, node string, replay bool, features ...string) *agent {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	st, err := tokenwatchv1.NewAuditStreamServiceClient(conn).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{conn: conn, st: st}
	t.Cleanup(func() { cancel(); a.close() })
	if err := st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{
		Cluster: cluster, Node: node, Replay: replay, SessionId: "test", Features: features,
	}}}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil || r.GetWelcome().GetCluster() != cluster {
		t.Fatalf("hello: %v, %v", r, err)
	}
	return a
}

func (a *agent) close() {
	if a.conn != nil {
		_ = a.st.CloseSend()
		a.conn.Close()
		a.conn = nil
	}
}

// send sends one batch and waits for its ack.
func (a *agent) send(t *testing.T, events []*tokenwatchv1.TokenEvent) {
	t.Helper()
	a.seq++
	if err := a.st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: a.seq, Events: events}}}); err != nil {
		t.Fatalf("send batch %d: %v", a.seq, err)
	}
	r, err := a.recv()
	if err != nil {
		t.Fatalf("batch %d: %v", a.seq, err)
	}
	if got := r.GetAck().GetSeq(); got != a.seq {
		t.Fatalf("ack = %d, want %d", got, a.seq)
	}
}

// recv returns the next response that is not a WatchUpdate, keeping those.
func (a *agent) recv() (*tokenwatchv1.StreamResponse, error) {
	for {
		r, err := a.st.Recv()
		if err != nil || r.GetWatch() == nil {
			return r, err
		}
		a.watches = append(a.watches, r.GetWatch())
	}
}

func (a *agent) heartbeat(t *testing.T, lastGrowth time.Time) {
	t.Helper()
	if err := a.st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Heartbeat{Heartbeat: &tokenwatchv1.Heartbeat{
		Sent: timestamppb.Now(), LastGrowth: timestamppb.New(lastGrowth),
	}}}); err != nil {
		t.Fatal(err)
	}
}

// sendAll sends events in batches of n.
func (a *agent) sendAll(t *testing.T, events []*tokenwatchv1.TokenEvent, n int) {
	t.Helper()
	for len(events) > 0 {
		k := min(n, len(events))
		a.send(t, events[:k])
		events = events[k:]
	}
}

// realEvents decodes the token creates of a real kube-apiserver v1.35.4 audit log.
func realEvents(t *testing.T) ([]*audit.Event, []*tokenwatchv1.TokenEvent) {
	t.Helper()
	f, err := os.Open("testdata/token-creates.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []*audit.Event
	var pbs []*tokenwatchv1.TokenEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		e, err := audit.Decode(sc.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
		pbs = append(pbs, wire.ToProto(e))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs, pbs
}

// event builds one token-create event.
func event(user, auditID, stage string, code int32, ns, sa, ip string) *tokenwatchv1.TokenEvent {
	return eventAt(user, auditID, stage, code, ns, sa, ip, "2026-11-26T23:09:30.000001Z")
}

// eventAt builds one token-create event received at rrt.
func eventAt(user, auditID, stage string, code int32, ns, sa, ip, rrt string) *tokenwatchv1.TokenEvent {
	e := &tokenwatchv1.TokenEvent{
		AuditId: auditID, Stage: stage, Verb: "create", Level: "Request",
		RequestUri:               "/api/v1/namespaces/" + ns + "/serviceaccounts/" + sa + "/token",
		RequestReceivedTimestamp: rrt, StageTimestamp: rrt,
		ObjectRef: &tokenwatchv1.ObjectRef{Resource: "serviceaccounts", Subresource: "token", Namespace: ns, Name: sa, ApiVersion: "v1"},
		User:      &tokenwatchv1.UserInfo{Present: true, Username: user, Groups: []string{"system:authenticated"}},
		SourceIps: []string{ip},
	}
	if stage != audit.StageRequestReceived {
		e.ResponseStatus = &tokenwatchv1.ResponseStatus{Code: code}
	}
	return e
}

func tokenRequests(recs []record) []record {
	var out []record
	for _, r := range recs {
		if r.EventName == "tokenwatch.token_request" {
			out = append(out, r)
		}
	}
	return out
}

func hasAuditID(id string) func([]record) bool {
	return func(recs []record) bool {
		for _, r := range recs {
			if r.Attrs["kubernetes.audit.auditID"] == id {
				return true
			}
		}
		return false
	}
}

// summarize renders token_request records as sorted "auditID user outcome".
func summarize(recs []record) []string {
	var out []string
	for _, r := range tokenRequests(recs) {
		out = append(out, r.Attrs["kubernetes.audit.auditID"]+" "+r.Attrs["user.name"]+" "+r.Attrs["event.outcome"])
	}
	sort.Strings(out)
	return out
}

// expected computes, independently of the pipeline, the alerts the default
// configuration must give for evs: one per request of a non-excluded user,
// its outcome from the completion's status code.
func expected(evs []*audit.Event, alerting map[string]bool) []string {
	type req struct{ user, outcome string }
	reqs := map[string]*req{}
	for _, e := range evs {
		k := e.AuditID + "|" + e.RequestReceivedTimestamp
		r := reqs[k]
		if r == nil {
			r = &req{user: e.Username(), outcome: "unknown"}
			reqs[k] = r
		}
		if e.Stage == audit.StageResponseComplete {
			r.outcome = "success"
			if e.ResponseStatus.Code >= 400 {
				r.outcome = "failure"
			}
		}
	}
	var out []string
	for k, r := range reqs {
		if alerting[r.user] {
			out = append(out, strings.SplitN(k, "|", 2)[0]+" "+r.user+" "+r.outcome)
		}
	}
	sort.Strings(out)
	return out
}

// writeConfig writes the aggregator config used by these tests: token_spray
// high enough not to fire on the real log unless a test wants it.
func writeConfig(t *testing.T, path, extra string) {
	t.Helper()
	data := "correlation:\n  service_accounts: 1000\n" + extra
	// Replace the file atomically, as a ConfigMap update or an editor does.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// Users of the real log that alert with the default configuration: the
// kube-controller-manager and the node (with system:nodes) are excluded;
// eks:* and aksService are managed-cloud identities, not excluded on a
// self-managed control plane.
var realAlerting = map[string]bool{
	"kubernetes-admin": true, "alice": true, "aksService": true, "eks:node-manager": true,
	"system:serviceaccount:team-a:token-minter": true,
}

func TestRealLogEndToEnd(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	writeConfig(t, s.configFile, "")
	agg := s.start(t)
	evs, pbs := realEvents(t)
	want := expected(evs, realAlerting)
	if len(want) != 40 {
		t.Fatalf("the fixture gives %d expected alerts, want 40 (fixture changed?)", len(want))
	}

	a := dial(t, agg.addr, "prod", "cp-1", false)
	a.sendAll(t, pbs, 25)
	recs := agg.out.waitFor(t, "40 token_request records", func(r []record) bool { return len(tokenRequests(r)) >= len(want) })
	if got := summarize(recs); !equalStrings(got, want) {
		t.Errorf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, r := range tokenRequests(recs) {
		// A token request made with a token minted (and watched) earlier in
		// the log is a chain: high.
		sev := "medium"
		if r.Attrs["tokenwatch.lineage.parent_jti"] != "" {
			sev = "high"
		}
		if r.Attrs["k8s.cluster.name"] != "prod" || r.Attrs["k8s.node.name"] != "cp-1" || r.Severity != sev {
			t.Errorf("record %s: cluster %q node %q severity %q, want prod cp-1 %s",
				r.Attrs["kubernetes.audit.auditID"], r.Attrs["k8s.cluster.name"], r.Attrs["k8s.node.name"], r.Severity, sev)
		}
		if u := r.Attrs["user.name"]; u == "aksService" || u == "eks:node-manager" {
			if r.Attrs["tokenwatch.exclusion.mismatch"] == "" {
				t.Errorf("record of %s lacks tokenwatch.exclusion.mismatch", u)
			}
		}
	}

	// A re-send (an agent restarted before its checkpoint moved) alerts nothing
	// again. The marker request sent after it is exported after anything the
	// re-send could have produced: the outbox drains in order.
	b := dial(t, agg.addr, "prod", "cp-1", false)
	b.sendAll(t, pbs, 40)
	b.send(t, []*tokenwatchv1.TokenEvent{event("bob", "marker-1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")})
	recs = agg.out.waitFor(t, "the marker", hasAuditID("marker-1"))
	if got := len(tokenRequests(recs)); got != len(want)+1 {
		t.Errorf("after the re-send: %d token_request records, want %d", got, len(want)+1)
	}
}

func TestRestartResumesPendingAndDoesNotRealert(t *testing.T) {
	s := newSetup(t)
	agg := s.start(t)
	a := dial(t, agg.addr, "prod", "cp-1", false)
	done := []*tokenwatchv1.TokenEvent{
		event("alice", "r1", audit.StageRequestReceived, 0, "team-a", "builder", "10.1.2.3"),
		event("alice", "r1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
	}
	lone := event("alice", "r2", audit.StageRequestReceived, 0, "team-a", "deployer", "10.1.2.3")
	a.send(t, done)
	a.send(t, []*tokenwatchv1.TokenEvent{lone})
	agg.out.waitFor(t, "r1", hasAuditID("r1"))
	a.close()
	agg.stop(t) // r2 is pending: the clock has not moved past its grace

	if got := summarize(agg.out.records()); !equalStrings(got, []string{"r1 alice success"}) {
		t.Fatalf("before restart: %q, want only r1", got)
	}

	agg2 := s.start(t)
	b := dial(t, agg2.addr, "prod", "cp-1", false)
	b.send(t, append(done, lone)) // a re-send after the restart
	s.clk.Add(2 * time.Second)    // the default stage_grace passes
	recs := agg2.out.waitFor(t, "r2 alerted alone", hasAuditID("r2"))
	if got, want := summarize(recs), []string{"r2 alice unknown"}; !equalStrings(got, want) {
		t.Errorf("after restart: %q, want %q (r1 not again, r2 resumed from the state)", got, want)
	}
	// Its completion, arriving late, is dropped.
	b.send(t, []*tokenwatchv1.TokenEvent{event("alice", "r2", audit.StageResponseComplete, 201, "team-a", "deployer", "10.1.2.3")})
	b.send(t, []*tokenwatchv1.TokenEvent{event("bob", "marker-2", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")})
	recs = agg2.out.waitFor(t, "the marker", hasAuditID("marker-2"))
	if got := len(tokenRequests(recs)); got != 2 {
		t.Errorf("token_request records after the late completion: %d, want 2 (r2, marker)", got)
	}
}

func TestConfigReload(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	writeConfig(t, s.configFile, "")
	agg := s.start(t)
	a := dial(t, agg.addr, "prod", "cp-1", false)
	a.send(t, []*tokenwatchv1.TokenEvent{event("ci-bot", "c1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")})
	agg.out.waitFor(t, "c1", hasAuditID("c1"))

	// A valid change takes effect without a restart.
	writeConfig(t, s.configFile, "exclusions:\n  add:\n    - user: \"ci-*\"\n")
	agg.logs.waitLog(t, "config reloaded", 1)
	a.send(t, []*tokenwatchv1.TokenEvent{
		event("ci-bot", "c2", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
		event("bob", "marker-3", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
	})
	recs := agg.out.waitFor(t, "the marker", hasAuditID("marker-3"))
	if hasAuditID("c2")(recs) {
		t.Error("ci-bot alerted after its exclusion was added")
	}

	// An invalid change is rejected and the previous configuration kept.
	writeConfig(t, s.configFile, "exclusions:\n  add:\n    - user: \"ci-*\"\n  bogus: 1\n")
	agg.logs.waitLog(t, "config reload: invalid file rejected", 1)
	a.send(t, []*tokenwatchv1.TokenEvent{
		event("ci-bot", "c3", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
		event("bob", "marker-4", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
	})
	recs = agg.out.waitFor(t, "the marker", hasAuditID("marker-4"))
	if hasAuditID("c3")(recs) {
		t.Error("ci-bot alerted after an invalid config was rejected (the old one should stay)")
	}
}

func TestCorrelationAcrossClusters(t *testing.T) {
	s := newSetup(t)
	agg := s.start(t)
	prod := dial(t, agg.addr, "prod", "cp-1", false)
	staging := dial(t, agg.addr, "staging", "cp-a", false)
	prod.send(t, []*tokenwatchv1.TokenEvent{eventAt("mallory", "m1", audit.StageResponseComplete, 201, "team-a", "builder", "203.0.113.9", "2026-11-26T23:09:30Z")})
	// Earlier in event time than prod's, first of its cluster: it counts.
	staging.send(t, []*tokenwatchv1.TokenEvent{eventAt("mallory", "m2", audit.StageResponseComplete, 201, "team-b", "deployer", "203.0.113.9", "2026-11-26T23:05:00Z")})
	recs := agg.out.waitFor(t, "two correlation records", func(r []record) bool {
		n := 0
		for _, x := range r {
			if x.EventName == "tokenwatch.correlation" {
				n++
			}
		}
		return n >= 2
	})
	var kinds []string
	for _, r := range recs {
		if r.EventName != "tokenwatch.correlation" {
			continue
		}
		kind := r.Attrs["tokenwatch.correlation.kind"]
		kinds = append(kinds, kind)
		want := map[string]string{
			"k8s.cluster.names":           "[prod,staging]",
			"kubernetes.audit.auditIDs":   "[m1,m2]",
			"tokenwatch.service_accounts": "[prod/team-a/builder,staging/team-b/deployer]",
			"tokenwatch.window.start":     "2026-11-26T23:05:00Z",
			"tokenwatch.window.end":       "2026-11-26T23:09:30Z",
		}
		if kind == "multi_cluster_source" {
			want["source.ip"] = "203.0.113.9"
		} else {
			want["user.name"] = "mallory"
		}
		for k, v := range want {
			if r.Attrs[k] != v {
				t.Errorf("%s %s = %q, want %q", kind, k, r.Attrs[k], v)
			}
		}
		if r.Severity != "high" {
			t.Errorf("correlation severity = %q, want high", r.Severity)
		}
	}
	sort.Strings(kinds)
	if want := []string{"multi_cluster_actor", "multi_cluster_source"}; !equalStrings(kinds, want) {
		t.Errorf("correlation kinds = %q, want %q", kinds, want)
	}
}

// TestTokenSprayAcrossNodes: one user minting for several service accounts
// through two nodes of a cluster, out of order, one event too late to count.
func TestTokenSprayAcrossNodes(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	if err := os.WriteFile(s.configFile, []byte("correlation:\n  service_accounts: 3\n  lateness: 1m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	agg := s.start(t)
	cp1 := dial(t, agg.addr, "prod", "cp-1", false)
	cp2 := dial(t, agg.addr, "prod", "cp-2", false)
	spray := func(id, sa, rrt string) []*tokenwatchv1.TokenEvent {
		return []*tokenwatchv1.TokenEvent{eventAt("sprayer", id, audit.StageResponseComplete, 201, "team-a", sa, "10.9.9.9", rrt)}
	}
	cp1.send(t, spray("s1", "sa-a", "2026-11-26T23:10:00Z"))
	cp2.send(t, spray("s2", "sa-b", "2026-11-26T23:09:30Z")) // out of order, within lateness
	cp1.send(t, spray("s3", "sa-c", "2026-11-26T23:08:00Z")) // 2m behind the cluster's newest: late
	cp1.send(t, []*tokenwatchv1.TokenEvent{event("bob", "marker-5", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")})
	recs := agg.out.waitFor(t, "the marker", hasAuditID("marker-5"))
	for _, r := range recs {
		if r.EventName == "tokenwatch.correlation" {
			t.Fatalf("correlation before the threshold: %v", r.Attrs)
		}
	}
	cp2.send(t, spray("s4", "sa-c", "2026-11-26T23:09:45Z"))
	recs = agg.out.waitFor(t, "token_spray", func(r []record) bool {
		for _, x := range r {
			if x.Attrs["tokenwatch.correlation.kind"] == "token_spray" {
				return true
			}
		}
		return false
	})
	for _, r := range recs {
		if r.EventName != "tokenwatch.correlation" {
			continue
		}
		want := map[string]string{
			"tokenwatch.correlation.kind": "token_spray",
			"user.name":                   "sprayer",
			"k8s.cluster.names":           "[prod]",
			"kubernetes.audit.auditIDs":   "[s1,s2,s4]",
			"tokenwatch.service_accounts": "[prod/team-a/sa-a,prod/team-a/sa-b,prod/team-a/sa-c]",
			"tokenwatch.window.start":     "2026-11-26T23:09:30Z",
			"tokenwatch.window.end":       "2026-11-26T23:10:00Z",
		}
		for k, v := range want {
			if r.Attrs[k] != v {
				t.Errorf("%s = %q, want %q", k, r.Attrs[k], v)
			}
		}
	}
	// Every request alerted on its own, the late one included.
	if got := len(tokenRequests(recs)); got != 5 {
		t.Errorf("token_request records = %d, want 5", got)
	}
}

func TestBudgetOverGRPC(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	writeConfig(t, s.configFile, "budget:\n  max_alerts: 1\n  window: 1m\n")
	agg := s.start(t)
	a := dial(t, agg.addr, "prod", "cp-1", false)
	a.send(t, []*tokenwatchv1.TokenEvent{
		event("alice", "b1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
		event("alice", "b2", audit.StageResponseComplete, 201, "team-a", "deployer", "10.1.2.3"),
		event("bob", "b3", audit.StageResponseComplete, 403, "team-b", "builder", "10.1.2.4"),
	})
	s.clk.Add(time.Minute) // the window ends
	recs := agg.out.waitFor(t, "alerts_suppressed", func(r []record) bool {
		for _, x := range r {
			if x.Attrs["tokenwatch.pipeline.kind"] == "alerts_suppressed" {
				return true
			}
		}
		return false
	})
	if got, want := summarize(recs), []string{"b1 alice success"}; !equalStrings(got, want) {
		t.Errorf("token_request records = %q, want %q", got, want)
	}
	for _, r := range recs {
		if r.Attrs["tokenwatch.pipeline.kind"] != "alerts_suppressed" {
			continue
		}
		if r.Severity != "low" || r.Attrs["tokenwatch.suppressed.count"] != "2" ||
			r.Attrs["tokenwatch.suppressed.users"] != "[alice=1,bob=1]" || r.Attrs["tokenwatch.suppressed.auditIDs"] != "[b2,b3]" {
			t.Errorf("alerts_suppressed = %v %v, want low, count 2, users [alice=1,bob=1], auditIDs [b2,b3]", r.Severity, r.Attrs)
		}
	}
}

// TestShutdownFlushes: what the pipeline's last tick writes (here the
// summary of a budget window cut short) is exported before Run returns.
func TestShutdownFlushes(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	writeConfig(t, s.configFile, "budget:\n  max_alerts: 1\n  window: 1h\n")
	agg := s.start(t)
	a := dial(t, agg.addr, "prod", "cp-1", false)
	a.send(t, []*tokenwatchv1.TokenEvent{
		event("alice", "f1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3"),
		event("alice", "f2", audit.StageResponseComplete, 201, "team-a", "deployer", "10.1.2.3"),
	})
	a.close()
	agg.stop(t)
	var kinds []string
	for _, r := range agg.out.records() {
		kinds = append(kinds, r.EventName+"/"+r.Attrs["tokenwatch.pipeline.kind"])
	}
	sort.Strings(kinds)
	if want := []string{"tokenwatch.pipeline/alerts_suppressed", "tokenwatch.token_request/"}; !equalStrings(kinds, want) {
		t.Errorf("exported by the time Run returned: %q, want %q", kinds, want)
	}
}

func TestSilence(t *testing.T) {
	s := newSetup(t)
	agg := s.start(t)
	a := dial(t, agg.addr, "prod", "cp-1", false)
	replay := dial(t, agg.addr, "prod", "replayer", true)
	a.heartbeat(t, s.clk.Now())
	replay.heartbeat(t, s.clk.Now())
	// The heartbeat is processed before the batch that follows it on the stream.
	a.send(t, nil)
	s.clk.Add(6 * time.Minute) // silence.after is 5m
	recs := agg.out.waitFor(t, "cluster_silent", func(r []record) bool { return len(r) > 0 })
	if len(recs) != 1 || recs[0].Attrs["tokenwatch.pipeline.kind"] != "cluster_silent" ||
		recs[0].Attrs["k8s.node.name"] != "cp-1" || recs[0].Severity != "high" {
		t.Fatalf("records = %v, want one cluster_silent for cp-1 (never for the replay agent)", recs)
	}
}

func TestMetricsEndpoints(t *testing.T) {
	s := newSetup(t)
	agg := s.start(t)
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": "tokenwatch_aggregator_events_total",
	} {
		resp, err := http.Get("http://" + agg.metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %d %q, want 200 containing %q", path, resp.StatusCode, truncate(body), want)
		}
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	if err := os.WriteFile(s.configFile, []byte("correlation:\n  window: 0s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), Config{Listen: "127.0.0.1:0", Insecure: true, StateDir: s.stateDir, ConfigFile: s.configFile, TrustDomain: "tokenwatch"})
	if err == nil || !strings.Contains(err.Error(), "correlation.window: must be > 0") || strings.Contains(err.Error(), "\n") {
		t.Errorf("Run with a bad config = %v, want one line naming correlation.window", err)
	}
}

// TestRunRefusesBusyAddress: an address already taken is a one-line error
// naming its flag, after what was built is released (the state file is
// closed: a second Run on it is not refused as locked).
func TestRunRefusesBusyAddress(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	stateDir := t.TempDir()
	for _, tc := range []struct {
		flag string
		c    Config
	}{
		{"--listen", Config{Listen: busy.Addr().String()}},
		{"--metrics-addr", Config{Listen: "127.0.0.1:0", MetricsAddr: busy.Addr().String()}},
	} {
		tc.c.Insecure, tc.c.StateDir, tc.c.TrustDomain = true, stateDir, "tokenwatch"
		err := Run(context.Background(), tc.c)
		if err == nil || !strings.HasPrefix(err.Error(), tc.flag+":") || strings.Contains(err.Error(), "\n") {
			t.Errorf("Run with %s busy = %v, want one line starting %q", tc.flag, err, tc.flag+":")
		}
	}
}

func TestConfigValidate(t *testing.T) {
	env := func(k, v string) func(string) string {
		return func(n string) string {
			if n == k {
				return v
			}
			return ""
		}
	}
	ok := Config{Listen: "127.0.0.1:8443", Insecure: true, TrustDomain: "tokenwatch", StateDir: "/tmp/x"}
	mtls := Config{Listen: ":8443", TLSCert: "c", TLSKey: "k", TLSClientCA: "ca", TrustDomain: "tokenwatch", StateDir: "/tmp/x"}
	tests := []struct {
		name string
		mod  func(*Config)
		base Config
		want string // "" = valid
	}{
		{"insecure loopback", func(*Config) {}, ok, ""},
		{"insecure localhost", func(c *Config) { c.Listen = "localhost:1" }, ok, ""},
		{"mtls", func(*Config) {}, mtls, ""},
		{"insecure on all interfaces", func(c *Config) { c.Listen = ":8443" }, ok, "--insecure: refusing plaintext on --listen :8443"},
		{"insecure on a public address", func(c *Config) { c.Listen = "192.0.2.1:8443" }, ok, "--insecure: refusing plaintext"},
		{"no security at all", func(c *Config) { c.Insecure = false }, ok, "no transport security"},
		{"insecure and tls", func(c *Config) { c.TLSCert = "c" }, ok, "--insecure: cannot be combined"},
		{"half tls", func(c *Config) { c.TLSClientCA = "" }, mtls, "--tls-client-ca: required"},
		{"bad listen", func(c *Config) { c.Listen = "8443" }, mtls, `--listen "8443": want HOST:PORT`},
		{"no state dir", func(c *Config) { c.StateDir = "" }, mtls, "--state-dir: required"},
		{"no trust domain", func(c *Config) { c.TrustDomain = "" }, mtls, "--trust-domain: required"},
		{"otlp url", func(c *Config) { c.OTLPEndpoint = "http://collector" }, mtls, ""},
		{"bad otlp endpoint", func(c *Config) { c.OTLPEndpoint = "collector" }, mtls, "--otlp-endpoint"},
		{"otlp scheme contradicts insecure", func(c *Config) { c.OTLPEndpoint, c.OTLPInsecure = "https://collector:4317", true }, mtls, "--otlp-insecure says plaintext"},
		{"bad otlp environment", func(c *Config) { c.Getenv = env(export.EnvEndpoint, "collector") }, mtls, export.EnvEndpoint},
		{"otlp protocol", func(c *Config) { c.Getenv = env(export.EnvProtocol, "http/protobuf") }, mtls, export.EnvProtocol},
		{"bad metrics addr", func(c *Config) { c.MetricsAddr = "9090" }, mtls, "--metrics-addr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.base
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// TestAgentWithoutLineage: an agent of the previous version (no "lineage"
// feature) is reported once by a tokenwatch.pipeline record, is sent no
// watch update, and delivers token requests as before.
func TestAgentWithoutLineage(t *testing.T) {
	s := newSetup(t)
	agg := s.start(t)
	a := dialFeatures(t, agg.addr, "prod", "cp-old", false)
	a.send(t, []*tokenwatchv1.TokenEvent{event("alice", "o1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")})
	recs := agg.out.waitFor(t, "o1 and the unsupported agent", func(r []record) bool {
		return hasAuditID("o1")(r) && slices.ContainsFunc(r, func(x record) bool {
			return x.Attrs["tokenwatch.pipeline.kind"] == "lineage_unsupported_agent"
		})
	})
	for _, r := range recs {
		if r.Attrs["tokenwatch.pipeline.kind"] == "lineage_unsupported_agent" && r.Attrs["k8s.node.name"] != "cp-old" {
			t.Errorf("lineage_unsupported_agent record names node %q, want cp-old", r.Attrs["k8s.node.name"])
		}
	}
	if len(a.watches) != 0 {
		t.Errorf("the agent without lineage got %d watch updates, want none", len(a.watches))
	}
	// A lineage agent gets its watch set, reset first.
	b := dial(t, agg.addr, "prod", "cp-new", false)
	b.send(t, nil)
	if len(b.watches) == 0 || !b.watches[0].GetReset_() {
		t.Errorf("the lineage agent's updates = %v, want the set with reset first", b.watches)
	}
}
