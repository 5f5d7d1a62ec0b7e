// Package apiserver runs tokenwatch against real kube-apiservers (issue 6):
// real TokenRequests under several identities, the apiserver's own audit log
// with rotation, and failures of every part, each scenario asserting the
// exact set of alerts received by an OpenTelemetry Collector receiver.
package apiserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

var (
	suite  harness.Suite
	k8sDir string
	k8sErr error
)

// TestMain builds tokenwatch and the Kubernetes binaries once. No leak check:
// client-go and klog leave goroutines behind.
func TestMain(m *testing.M) {
	os.Exit(suite.Main(m, harness.MainOptions{Setup: func(string) error {
		k8sDir, k8sErr = kube.Build()
		if k8sErr != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", k8sErr)
		}
		return nil
	}}))
}

// ledger is every request that must alert, in all scenarios so far.
type ledger struct {
	wants  []harness.Want
	tokens []string // every token minted (must never appear downstream)
}

// mint performs a TokenRequest and records whether it must alert.
func (l *ledger) mint(t *testing.T, cluster string, cl *kube.Client, ns, sa string, alerts, dryRun bool) kube.Mint {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := cl.MintToken(ctx, ns, sa, dryRun)
	if m.AuditID == "" {
		t.Fatalf("%s mint %s/%s: no Audit-Id in the response (err %v)", cl.Name, ns, sa, m.Err)
	}
	if m.Token != "" {
		l.tokens = append(l.tokens, m.Token)
	}
	if alerts {
		l.wants = append(l.wants, harness.Want{Cluster: cluster, AuditID: m.AuditID, User: userOf(cl.Name),
			Namespace: ns, Name: sa, Outcome: m.Outcome(), DryRun: dryRun, Chain: chained(cl.Name)})
	}
	return m
}

// chained reports whether a client authenticates with a token the admin
// minted: that mint alerted, so the token is watched, and every token
// request made with it is a chain (it alerts at high, even for a user the
// default exclusions name).
func chained(client string) bool {
	return client == "team-a:builder" || client == "kube-system:minter"
}

func userOf(client string) string {
	switch client {
	case "team-a:builder":
		return "system:serviceaccount:team-a:builder"
	case "kube-system:minter":
		return "system:serviceaccount:kube-system:minter"
	case "carol-as-system:kube-controller-manager":
		return "carol"
	}
	return client
}

// check waits for every expected alert, then for a quiet spell, and asserts
// that the received token_request records are exactly the expected set.
func (l *ledger) check(t *testing.T, sink *harness.Sink, scenario string, added int) {
	t.Helper()
	keys := harness.KeysOf(l.wants)
	if !sink.WaitProgress(45*time.Second, 3*time.Minute, func(r []harness.Record) bool {
		return harness.CountDistinct(r, keys) == len(keys)
	}) {
		t.Logf("scenario %s: alerts stopped arriving (45 s without a record) before the expected set was complete", scenario)
	}
	sink.Quiet(4*time.Second, 30*time.Second)
	res := harness.Compare(sink.Records(), l.wants)
	t.Logf("scenario %s: %d new alerts expected in this scenario", scenario, added)
	harness.Report(t, scenario, res)
}

func TestRealAPIServer(t *testing.T) {
	b := suite.Need(t)
	if k8sErr != nil {
		t.Fatalf("kube-apiserver/etcd did not build: %v", k8sErr)
	}
	logs := harness.LogDir(t)
	etcd := kube.StartEtcd(t, k8sDir, logs)
	sink := harness.StartSink(t)
	// Processes started in a scenario live on to the next ones: the top
	// test owns them.
	top := t
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Owner = top
	agg.Start(t)

	startAgent := func(t *testing.T, c *kube.Cluster) *harness.Agent {
		a := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: c.Name, Node: "cp-" + c.Name,
			AuditLog: c.AuditLog, Aggregator: agg.Listen, StateDir: filepath.Join(top.TempDir(), "agent-state"),
			Metrics: harness.Addr(harness.FreePort(t)), StartAt: "beginning", Owner: top}
		a.Start(t)
		return a
	}
	ctx := context.Background()

	c1 := kube.StartCluster(t, k8sDir, logs, etcd, kube.Options{Name: "c1", Compress: true})
	agent1 := startAgent(t, c1)
	if err := c1.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	l := &ledger{}
	// The admin mints the bearer tokens used below: it is not a system
	// identity, so these alert too.
	builderTok := l.mint(t, "c1", c1.Admin, "team-a", "builder", true, false)
	minterTok := l.mint(t, "c1", c1.Admin, "kube-system", "minter", true, false)
	if builderTok.Err != nil || minterTok.Err != nil {
		t.Fatalf("admin mint: %v %v", builderTok.Err, minterTok.Err)
	}
	alice := c1.CertClient(t, "alice")
	bob := c1.CertClient(t, "bob")
	carol := c1.Impersonating(t, "carol", "system:kube-controller-manager")
	builder := c1.TokenClient(t, "team-a:builder", builderTok.Token)
	kcm := c1.CertClient(t, "system:kube-controller-manager")
	node := c1.CertClient(t, "system:node:cp-c1", "system:nodes")
	minter := c1.TokenClient(t, "kube-system:minter", minterTok.Token)
	mallory := c1.CertClient(t, "mallory")

	t.Run("attacker_mints", func(t *testing.T) {
		n := len(l.wants)
		if m := l.mint(t, "c1", alice, "team-a", "app", true, false); m.Err != nil {
			t.Errorf("alice has RBAC in team-a, mint failed: %v", m.Err)
		}
		if m := l.mint(t, "c1", bob, "team-b", "app", true, false); m.Err == nil {
			t.Errorf("bob has no RBAC, mint succeeded")
		}
		l.mint(t, "c1", carol, "team-a", "app", true, false)
		if m := l.mint(t, "c1", builder, "team-a", "app", true, false); m.Err != nil {
			t.Errorf("team-a:builder mint failed: %v", m.Err)
		}
		l.mint(t, "c1", alice, "team-a", "app", true, true)
		l.check(t, sink, "attacker_mints", len(l.wants)-n)
		for _, r := range harness.ByEvent(sink.Records(), harness.EventTokenRequest) {
			// The Request-level policy logs the TokenRequest body; the
			// apiserver annotates the credential it issued.
			if r.Str("user.name") == "alice" && r.Str("event.outcome") == "success" {
				if aud := fmt.Sprint(r.Attrs["kubernetes.audit.requestObject.spec.audiences"]); aud != "[https://kubernetes.default.svc]" {
					t.Errorf("alice's alert: requestObject.spec.audiences = %s, want [https://kubernetes.default.svc]", aud)
				}
				if !strings.HasPrefix(r.Str("kubernetes.audit.annotations.authentication_kubernetes_io/issued-credential-id"), "JTI=") {
					t.Errorf("alice's alert: issued-credential-id = %q, want JTI=...", r.Str("kubernetes.audit.annotations.authentication_kubernetes_io/issued-credential-id"))
				}
				if r.Str("kubernetes.audit.annotations.authorization_k8s_io/decision") != "allow" {
					t.Errorf("alice's alert: authorization decision = %q, want allow", r.Str("kubernetes.audit.annotations.authorization_k8s_io/decision"))
				}
			}
			if r.Str("user.name") == "bob" && r.Attrs["kubernetes.audit.responseStatus.code"] != int64(403) {
				t.Errorf("bob's alert: responseStatus.code = %v, want 403", r.Attrs["kubernetes.audit.responseStatus.code"])
			}
			if r.Str("user.name") == "carol" && r.Str("kubernetes.audit.impersonatedUser.username") != "system:kube-controller-manager" {
				t.Errorf("carol's alert: impersonatedUser = %q, want system:kube-controller-manager",
					r.Str("kubernetes.audit.impersonatedUser.username"))
			}
		}
	})

	t.Run("system_identities", func(t *testing.T) {
		n := len(l.wants)
		for i := 0; i < 3; i++ {
			l.mint(t, "c1", kcm, "team-a", "app", false, false)
			// Node authorization and NodeRestriction: 403 for a service
			// account no pod on this node uses; still a system identity.
			if m := l.mint(t, "c1", node, "team-a", "app", false, false); m.Err == nil {
				t.Errorf("node minted a token for a service account of no pod on it; want 403")
			}
			// kube-system:minter is excluded by the default list, but its
			// token was minted by the admin (an alert): a chain, which alerts.
			l.mint(t, "c1", minter, "kube-system", "minter", true, false)
		}
		// A marker after them: once it has arrived, the system events before
		// it in the same file have been processed.
		l.mint(t, "c1", alice, "team-a", "app", true, false)
		l.check(t, sink, "system_identities", len(l.wants)-n)
	})

	t.Run("rotation_under_load", func(t *testing.T) {
		n := len(l.wants)
		before := len(c1.AuditFiles())
		loadCtx, stop := context.WithCancel(ctx)
		defer stop()
		var wg sync.WaitGroup
		var loadErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadErr = c1.Admin.Load(loadCtx, 2400, 4)
		}()
		for i := 0; i < 20; i++ {
			l.mint(t, "c1", mallory, "team-a", "app", true, false)
		}
		wg.Wait()
		if loadErr != nil {
			t.Fatalf("load: %v", loadErr)
		}
		l.mint(t, "c1", mallory, "team-a", "app", true, false)
		rotated := len(c1.AuditFiles()) - before
		t.Logf("rotation_under_load: %d new rotated audit files", rotated)
		if rotated < 3 {
			t.Errorf("only %d rotations under load; the scenario needs at least 3", rotated)
		}
		l.check(t, sink, "rotation_under_load", len(l.wants)-n)
	})

	t.Run("agent_sigkill", func(t *testing.T) {
		n := len(l.wants)
		loadCtx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = c1.Admin.Load(loadCtx, 800, 2) }()
		for i := 0; i < 5; i++ {
			l.mint(t, "c1", mallory, "team-a", "app", true, false)
		}
		if err := agent1.Proc.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill agent: %v", err)
		}
		<-agent1.Proc.Done()
		for i := 0; i < 5; i++ {
			l.mint(t, "c1", mallory, "team-a", "app", true, false)
		}
		stop()
		wg.Wait()
		agent1.Start(t) // same state dir: resumes from its checkpoint
		l.mint(t, "c1", mallory, "team-a", "app", true, false)
		l.check(t, sink, "agent_sigkill", len(l.wants)-n)
	})

	t.Run("aggregator_restart", func(t *testing.T) {
		n := len(l.wants)
		l.mint(t, "c1", mallory, "team-a", "app", true, false)
		if err := agg.Proc.Stop(15 * time.Second); err != nil {
			t.Errorf("aggregator graceful stop: %v", err)
		}
		for i := 0; i < 5; i++ {
			l.mint(t, "c1", mallory, "team-a", "app", true, false)
		}
		agg.Start(t)
		l.mint(t, "c1", mallory, "team-a", "app", true, false)
		l.check(t, sink, "aggregator_restart", len(l.wants)-n)
	})

	t.Run("collector_outage", func(t *testing.T) {
		n := len(l.wants)
		if err := sink.Stop(); err != nil {
			t.Fatalf("stop collector: %v", err)
		}
		for i := 0; i < 10; i++ {
			l.mint(t, "c1", mallory, "team-a", "app", true, false)
		}
		// The outage lasts a while (its length is the fault, not a wait for
		// a condition): the aggregator must keep the alerts and retry.
		time.Sleep(8 * time.Second)
		if err := sink.Start(); err != nil {
			t.Fatalf("restart collector: %v", err)
		}
		l.check(t, sink, "collector_outage", len(l.wants)-n)
	})

	t.Run("two_clusters_correlation", func(t *testing.T) {
		n := len(l.wants)
		c2 := kube.StartCluster(t, k8sDir, logs, etcd, kube.Options{Name: "c2", Owner: top})
		startAgent(t, c2)
		if err := c2.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		alice2 := c2.CertClient(t, "alice")
		// Correlation state need not survive the aggregator restart above:
		// alice mints in c1 again, then in c2.
		l.mint(t, "c1", alice, "team-a", "app", true, false)
		l.mint(t, "c2", alice2, "team-a", "app", true, false)
		l.check(t, sink, "two_clusters_correlation", len(l.wants)-n)

		ok := sink.WaitFor(30*time.Second, func(r []harness.Record) bool {
			return len(harness.ByEvent(r, harness.EventCorrelation)) > 0
		})
		sink.Quiet(3*time.Second, 15*time.Second)
		var got []string
		for _, r := range harness.ByEvent(sink.Records(), harness.EventCorrelation) {
			got = append(got, r.Str("tokenwatch.correlation.kind")+"/"+r.Str("user.name")+r.Str("source.ip"))
			if r.Str("tokenwatch.correlation.kind") == "multi_cluster_actor" {
				names, _ := r.Attrs["k8s.cluster.names"].([]any)
				var cs []string
				for _, c := range names {
					cs = append(cs, fmt.Sprint(c))
				}
				sort.Strings(cs)
				if !slices.Equal(cs, []string{"c1", "c2"}) {
					t.Errorf("multi_cluster_actor k8s.cluster.names = %v, want [c1 c2]", cs)
				}
				if r.SeverityText != "high" || r.SeverityNumber != 17 {
					t.Errorf("correlation severity = %s/%d, want high/17", r.SeverityText, r.SeverityNumber)
				}
			}
		}
		t.Logf("scenario two_clusters_correlation: correlation records expected 1, received %d: %v", len(got), got)
		if !ok || !slices.Equal(got, []string{"multi_cluster_actor/alice"}) {
			t.Errorf("correlation records = %v, want [multi_cluster_actor/alice]", got)
		}
	})

	t.Run("request_response_policy_no_leak", func(t *testing.T) {
		n := len(l.wants)
		c3 := kube.StartCluster(t, k8sDir, logs, etcd, kube.Options{Name: "c3", Policy: kube.PolicyRequestResponse, Owner: top})
		agent3 := startAgent(t, c3)
		if err := c3.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		bob3 := c3.CertClient(t, "bob")
		c3.Admin.Name = "admin-c3"
		var minted []string
		for i := 0; i < 3; i++ {
			m := l.mint(t, "c3", c3.Admin, "team-a", "app", true, false)
			if m.Token == "" {
				t.Fatalf("admin mint in c3: %v", m.Err)
			}
			minted = append(minted, m.Token)
		}
		l.mint(t, "c3", bob3, "team-a", "app", true, false)
		l.check(t, sink, "request_response_policy_no_leak", len(l.wants)-n)
		inLog := 0
		for _, f := range c3.AuditFiles() {
			if filepath.Ext(f) == ".log" {
				inLog += len(harness.ResponseTokens(t, f))
			}
		}
		if inLog == 0 {
			t.Errorf("the RequestResponse policy logged no token: the leak test would prove nothing")
		}
		leaks := harness.FindLeaks(t, l.tokens, sink.Raw(), []*harness.Proc{agg.Proc, agent3.Proc, agent1.Proc},
			agg.StateDir, agent3.StateDir, agent1.StateDir)
		for i, lk := range leaks {
			if i == 5 {
				break
			}
			t.Errorf("minted token leaked into %s", lk.Where)
		}
		t.Logf("searched %d minted tokens (%d in c3's audit log) downstream: %d leaks", len(l.tokens), inLog, len(leaks))
		_ = minted
	})

	if err := agg.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator did not stop cleanly on SIGTERM: %v", err)
	}
	if err := agent1.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("agent did not stop cleanly on SIGTERM: %v", err)
	}
}
