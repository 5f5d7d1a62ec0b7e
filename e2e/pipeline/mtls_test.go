package pipeline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

// TestMutualTLS replays the generated log into an mTLS aggregator with a
// certificate from a foreign CA, with a certificate bound to another
// cluster, and plaintext: each is refused and delivers nothing. Then with the
// right certificate the expected alerts arrive, exactly once.
func TestMutualTLS(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.log")
	expect := filepath.Join(dir, "expected.json")
	gen := harness.Start(t, logs, "genaudit", b.GenAudit, "-o", auditLog, "-seed", "11", "-lines", "5000", "-expect", expect)
	if err := gen.Wait(time.Minute); err != nil {
		t.Fatalf("genaudit: %v", err)
	}
	wants := harness.LoadWants(t, expect, "c1")

	ca, err := kube.NewCA("tokenwatch-e2e")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := kube.NewCA("someone-else")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name string, issue func() (kube.KeyPair, error)) *harness.ClientTLS {
		t.Helper()
		kp, err := issue()
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := kp.Write(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return &harness.ClientTLS{Cert: c, Key: k, CA: caFile}
	}
	server := write("aggregator", func() (kube.KeyPair, error) { return ca.Issue("aggregator", nil, "127.0.0.1", "localhost") })
	good := write("agent-c1", func() (kube.KeyPair, error) { return ca.IssueSPIFFE("agent-c1", "spiffe://tokenwatch/cluster/c1") })
	otherCluster := write("agent-c2", func() (kube.KeyPair, error) { return ca.IssueSPIFFE("agent-c2", "spiffe://tokenwatch/cluster/c2") })
	wrongCA := write("agent-c1-foreign", func() (kube.KeyPair, error) { return foreign.IssueSPIFFE("agent-c1", "spiffe://tokenwatch/cluster/c1") })

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.TLS = &harness.ServerTLS{Cert: server.Cert, Key: server.Key, ClientCA: caFile}
	agg.Start(t)

	refused := []struct {
		name string
		tls  *harness.ClientTLS
	}{
		{"foreign-ca", wrongCA},
		{"cert-for-c2", otherCluster},
		{"plaintext", nil},
	}
	for _, r := range refused {
		a := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-" + r.name, Cluster: "c1", Node: "cp-1",
			AuditLog: auditLog, Aggregator: agg.Listen, TLS: r.tls, Once: true, Extra: []string{"--once-timeout", "5s"}}
		a.Start(t)
		err := a.Proc.Wait(time.Minute)
		if err == nil {
			t.Errorf("%s: agent --once exited 0, want a refusal", r.name)
		}
		_, stderr := a.Proc.Output()
		lines := strings.Split(strings.TrimSpace(string(stderr)), "\n")
		t.Logf("%s: agent refused (%v): %s", r.name, err, lines[len(lines)-1])
	}
	if n := len(sink.Records()); n != 0 {
		t.Errorf("refused agents delivered %d records", n)
	}

	a := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-good", Cluster: "c1", Node: "cp-1",
		AuditLog: auditLog, Aggregator: agg.Listen, TLS: good}
	a.RunOnce(t, 2*time.Minute)
	keys := harness.KeysOf(wants)
	sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return harness.CountDistinct(r, keys) == len(keys) })
	sink.Quiet(4*time.Second, 20*time.Second)
	harness.Report(t, "mtls", harness.Compare(sink.Records(), wants))
}
