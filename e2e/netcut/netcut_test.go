// Package netcut cuts the network between an agent and the aggregator: the
// agent runs in its own network namespace, joined to the host by a veth link
// that the test takes down while audit events keep coming, then restores.
package netcut

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/auditwrite"
	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

var suite harness.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, harness.MainOptions{Leaks: true})) }

func TestNetworkCut(t *testing.T) {
	b := suite.Need(t)
	if why := harness.NetNSAvailable(); why != "" {
		t.Skipf("SKIP network cut: %s", why)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()
	ns := harness.NewNetNS(t)

	// Off loopback, tokenwatch requires mTLS.
	ca, err := kube.NewCA("tokenwatch-e2e")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("aggregator", nil, ns.HostIP)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := srv.Write(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.IssueSPIFFE("agent-c1", "spiffe://tokenwatch/cluster/c1")
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := cli.Write(dir, "agent")
	if err != nil {
		t.Fatal(err)
	}

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Listen = fmt.Sprintf("%s:%d", ns.HostIP, harness.FreePort(t))
	agg.TLS = &harness.ServerTLS{Cert: srvCert, Key: srvKey, ClientCA: caFile}
	agg.Start(t)

	auditDir := filepath.Join(dir, "audit")
	if err := os.MkdirAll(auditDir, 0o700); err != nil {
		t.Fatal(err)
	}
	auditLog := filepath.Join(auditDir, "audit.log")
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: auditLog,
		Aggregator: agg.Listen, StateDir: filepath.Join(dir, "agent-state"), StartAt: "beginning",
		TLS: &harness.ClientTLS{Cert: cliCert, Key: cliKey, CA: caFile}, NetNS: ns}
	agent.Start(t)

	milestones := make(chan int, 10)
	done := make(chan error, 1)
	var res auditwrite.Result
	go func() {
		defer close(milestones)
		var err error
		res, err = auditwrite.Run(context.Background(), auditwrite.Config{Path: auditLog, Mode: auditwrite.Lumberjack,
			MaxSizeMB: 1, Compress: true, Events: 20 * 930, AlertEvery: 97, SystemEvery: 89, Cluster: "c1",
			Milestones: milestones, RateMBps: 1})
		done <- err
	}()
	cutAt := time.Now()
	for m := range milestones {
		switch m {
		case 2:
			t.Logf("20%%: cutting the agent's link")
			cutAt = time.Now()
			if err := ns.Cut(); err != nil {
				t.Fatal(err)
			}
		case 8:
			t.Logf("80%%: restoring the link after %v", time.Since(cutAt).Round(time.Millisecond))
			if err := ns.Restore(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("wrote %d events, %.1f MB, %d rotations; %d must alert", res.Events, float64(res.Bytes)/1e6, res.Rotations, len(res.Wants))
	keys := harness.KeysOf(res.Wants)
	if !sink.WaitProgress(90*time.Second, 5*time.Minute, func(r []harness.Record) bool {
		return harness.CountDistinct(r, keys) == len(keys)
	}) {
		t.Logf("alerts stopped arriving before the expected set was complete")
	}
	sink.Quiet(4*time.Second, 30*time.Second)
	harness.Report(t, "network_cut", harness.Compare(sink.Records(), res.Wants))
	if err := agent.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("agent did not stop cleanly: %v", err)
	}
}
