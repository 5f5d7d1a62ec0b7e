package apiserver

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

// escapedPadding is a TokenRequest body just under kube-apiserver's 3 MiB
// request limit whose one audience is "<", a character the apiserver
// escapes six-fold ("\u003c") when it writes the body into the audit
// event: an 18.9 MB line (docs/CONTRACT.md, audit.LargestTokenEvent).
func escapedPadding() []byte {
	return []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["` +
		strings.Repeat("<", 3145000) + `"]}}`)
}

// watched is one kube-apiserver, set up (kube.Cluster.Setup), watched by
// an agent reading its audit log from the beginning, with an aggregator
// exporting to sink.
type watched struct {
	c     *kube.Cluster
	agent *harness.Agent
	agg   *harness.Aggregator
	sink  *harness.Sink
}

// startWatched starts etcd, a sink, an aggregator (with aggConfig as its
// --config file when not empty), a kube-apiserver with o and its agent.
func startWatched(t *testing.T, o kube.Options, aggConfig string) watched {
	t.Helper()
	b := suite.Need(t)
	if k8sErr != nil {
		t.Fatalf("kube-apiserver/etcd did not build: %v", k8sErr)
	}
	logs := harness.LogDir(t)
	etcd := kube.StartEtcd(t, k8sDir, logs)
	w := watched{sink: harness.StartSink(t)}
	w.agg = harness.NewAggregator(t, b, logs, w.sink.Endpoint)
	if aggConfig != "" {
		w.agg.Config = filepath.Join(t.TempDir(), "aggregator.yaml")
		if err := os.WriteFile(w.agg.Config, []byte(aggConfig), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w.agg.Start(t)
	w.c = kube.StartCluster(t, k8sDir, logs, etcd, o)
	w.agent = &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: w.c.Name, Node: "cp-" + w.c.Name,
		AuditLog: w.c.AuditLog, Aggregator: w.agg.Listen, StateDir: filepath.Join(t.TempDir(), "agent-state"),
		Metrics: harness.Addr(harness.FreePort(t)), StartAt: "beginning"}
	w.agent.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := w.c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	return w
}

// mintPadded has alice mint a token with a body of escapedPadding, waits
// until it alerts and the sink is quiet, and returns its token_request
// records.
func mintPadded(t *testing.T, ctx context.Context, w watched) []harness.Record {
	t.Helper()
	padded := w.c.RawMint(t, ctx, "team-a", "app", kube.RawMintOptions{User: "alice", Body: escapedPadding()})
	if padded.Status != http.StatusCreated {
		t.Fatalf("padded TokenRequest: HTTP %d, want 201", padded.Status)
	}
	alerts := func(recs []harness.Record) []harness.Record {
		var out []harness.Record
		for _, r := range harness.ByEvent(recs, harness.EventTokenRequest) {
			if r.Str("kubernetes.audit.auditID") == padded.AuditID {
				out = append(out, r)
			}
		}
		return out
	}
	if !w.sink.WaitFor(2*time.Minute, func(r []harness.Record) bool { return len(alerts(r)) > 0 }) {
		w.agent.Proc.Dump(t)
		t.Fatal("the padded TokenRequest did not alert")
	}
	w.sink.Quiet(4*time.Second, 30*time.Second)
	return alerts(w.sink.Records())
}

// rotationRecords returns the audit_log_rotation_small records.
func rotationRecords(recs []harness.Record) []harness.Record {
	return harness.ByKind(recs, "audit_log_rotation_small")
}

// TestSmallRotationReported: a kube-apiserver that rotates its audit log
// at 1 MiB (--audit-log-maxsize=1) refuses an event longer than that, so a
// TokenRequest padded with escaped characters loses its ResponseComplete
// event: it alerts only from its RequestReceived stage, with no outcome.
// The agent infers the rotation size from the apiserver's own rotation,
// warns, exposes it, and the aggregator reports it once
// (audit_log_rotation_small), so the blind spot is said before it is used.
func TestSmallRotationReported(t *testing.T) {
	w := startWatched(t, kube.Options{Name: "rot1", MaxSizeMB: 1}, "")
	c, agent, agg, sink := w.c, w.agent, w.agg, w.sink
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for len(c.AuditFiles()) < 2 { // the apiserver's own rotation
		if err := c.Admin.Load(ctx, 100, 4); err != nil {
			t.Fatalf("no rotation: %v", err)
		}
	}
	if !sink.WaitFor(2*time.Minute, func(r []harness.Record) bool { return len(rotationRecords(r)) > 0 }) {
		agg.Proc.Dump(t)
		agent.Proc.Dump(t)
		t.Fatal("no audit_log_rotation_small within 2m of the apiserver's first rotation")
	}
	r := rotationRecords(sink.Records())[0]
	if got := r.Attrs["tokenwatch.audit_log.rotation_bytes"]; got != int64(1<<20) {
		t.Errorf("rotation_bytes %v (%T), want 1 MiB", got, got)
	}
	if r.Str("k8s.node.name") != agent.Node || r.Str("k8s.cluster.name") != c.Name || r.SeverityNumber != 17 ||
		!strings.Contains(r.Body, "--audit-log-maxsize=1") {
		t.Errorf("record for %s/%s, severity %d, body %q; want %s/%s, 17, naming --audit-log-maxsize=1",
			r.Str("k8s.cluster.name"), r.Str("k8s.node.name"), r.SeverityNumber, r.Body, c.Name, agent.Node)
	}
	if err := agent.Proc.WaitStderr("the audit log rotates below the largest token request event", time.Minute); err != nil {
		t.Errorf("the agent did not warn: %v", err)
	}
	if m := harness.MetricLines(agent.Metrics, "tokenwatch_agent_audit_log_rotation_bytes"); !slices.Contains(m, "tokenwatch_agent_audit_log_rotation_bytes 1.048576e+06") {
		t.Errorf("agent metric: %q, want 1 MiB", m)
	}

	// What it warns of: the padded request's completion never reaches the
	// file, so it alerts from RequestReceived alone, its outcome unknown.
	got := mintPadded(t, ctx, w)
	if len(got) != 1 || got[0].Str("event.outcome") != "unknown" || got[0].Str("user.name") != "alice" {
		t.Errorf("padded TokenRequest: %d alerts (outcome %q), want one by alice with outcome unknown", len(got), got[0].Str("event.outcome"))
	}
	if n := len(rotationRecords(sink.Records())); n != 1 {
		t.Errorf("%d audit_log_rotation_small records, want 1", n)
	}
}

// TestEscapedPaddingAlertsAt19MiB: at --audit-log-maxsize=19, the largest
// token request event the apiserver can write (18.9 MB, from a body padded
// with "<") reaches the file, and alerts once with its outcome: the bound
// audit_log_rotation_small holds the apiserver to is enough. The line is
// longer than the agent's 16 MiB line limit, so it is read in bounded
// memory, sent with its fields cut, and the bytes not kept are reported.
// The apiserver takes about 2 s to process and write such a request, past
// the default alerting.stage_grace: here it is long enough for the
// completion to alert.
func TestEscapedPaddingAlertsAt19MiB(t *testing.T) {
	w := startWatched(t, kube.Options{Name: "rot19", MaxSizeMB: 19},
		// The apiserver takes seconds to process and write such a request:
		// its completion must not come after the default 2s grace.
		"alerting:\n  stage_grace: 2m\n")
	sink := w.sink
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	got := mintPadded(t, ctx, w)
	recs := sink.Records()
	if len(got) != 1 || got[0].Str("event.outcome") != "success" || got[0].Str("user.name") != "alice" {
		t.Errorf("padded TokenRequest: %d alerts (outcome %q), want one by alice with outcome success", len(got), got[0].Str("event.outcome"))
	}
	var lost []string
	for _, r := range harness.ByKind(recs, "audit_data_lost") {
		lost = append(lost, r.Str("tokenwatch.loss.reason"))
	}
	if !slices.Equal(lost, []string{"line_too_long"}) {
		t.Errorf("audit_data_lost reasons %q, want one line_too_long (the 18.9 MB line's bytes not kept)", lost)
	}
	if n := len(rotationRecords(recs)); n != 0 {
		t.Errorf("%d audit_log_rotation_small records at 19 MiB, want none", n)
	}
}
