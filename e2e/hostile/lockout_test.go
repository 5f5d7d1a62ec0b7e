package hostile

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

// Limits of the lock-out scenario: small, so that the hostile client
// exceeds them with few connections; hello_timeout long, so that only the
// per-certificate accounting and the separate health pool protect cluster
// B (the timeout would free the slots by itself after a while).
const (
	lockoutMaxStreams  = 64
	lockoutPerCluster  = 8
	lockoutMaxWatches  = 16
	lockoutConns       = 40
	lockoutPerConn     = 2 // streams and as many watches on each connection
	lockoutHostileKind = lockoutConns * lockoutPerConn
)

// TestLockoutByStreamsWithoutHello is issue 12's point 4: a client holding
// cluster a's certificate opens more agent streams than the aggregator's
// max_streams that never send a Hello, and more health watches than its
// max_health_watches; a real agent of cluster b still connects and delivers
// every alert. Before the fix every stream took a global slot before its
// Hello, health watches included, and b's agent got RESOURCE_EXHAUSTED.
func TestLockoutByStreamsWithoutHello(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.log")
	expect := filepath.Join(dir, "expected.json")
	gen := harness.Start(t, logs, "genaudit", b.GenAudit, "-o", auditLog, "-seed", "12", "-lines", "3000", "-expect", expect)
	if err := gen.Wait(time.Minute); err != nil {
		t.Fatalf("genaudit: %v", err)
	}
	wants := harness.LoadWants(t, expect, "b")

	ca, err := kube.NewCA("tokenwatch-e2e")
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
	certA := write("agent-a", func() (kube.KeyPair, error) { return ca.IssueSPIFFE("agent-a", "spiffe://tokenwatch/cluster/a") })
	certB := write("agent-b", func() (kube.KeyPair, error) { return ca.IssueSPIFFE("agent-b", "spiffe://tokenwatch/cluster/b") })

	cfg := filepath.Join(dir, "aggregator.yaml")
	if err := os.WriteFile(cfg, []byte("limits:\n"+
		"  max_streams: "+strconv.Itoa(lockoutMaxStreams)+"\n"+
		"  max_streams_per_cluster: "+strconv.Itoa(lockoutPerCluster)+"\n"+
		"  max_health_watches: "+strconv.Itoa(lockoutMaxWatches)+"\n"+
		"  hello_timeout: 10m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.TLS = &harness.ServerTLS{Cert: server.Cert, Key: server.Key, ClientCA: caFile}
	agg.Config = cfg
	agg.Start(t)

	// The hostile client: no product code, a raw stream that never sends.
	creds := clientCreds(t, certA)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	desc := &grpc.StreamDesc{StreamName: "Stream", ClientStreams: true, ServerStreams: true}
	for range lockoutConns {
		conn, err := grpc.NewClient(agg.Listen, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for range lockoutPerConn {
			if _, err := conn.NewStream(ctx, desc, "/tokenwatch.v1.AuditStreamService/Stream"); err != nil {
				t.Fatalf("hostile stream: %v", err)
			}
			if _, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatalf("hostile watch: %v", err)
			}
		}
	}
	// Every hostile stream and watch was decided: held or refused.
	refusedStreams, refusedWatches := lockoutHostileKind-lockoutPerCluster, lockoutHostileKind-4
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, w := violations(agg.Metrics, "too_many_certificate_streams"), violations(agg.Metrics, "too_many_health_watches")
		if s >= refusedStreams && w >= refusedWatches {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hostile streams not all decided: refused %d streams (want %d), %d watches (want %d)",
				s, refusedStreams, w, refusedWatches)
		}
		time.Sleep(100 * time.Millisecond) // polling a process's metrics; nothing timed is asserted
	}
	t.Logf("held by the hostile certificate: %s", strings.Join(harness.MetricLines(agg.Metrics, "tokenwatch_aggregator_grpc_streams_open"), "; "))

	a := &harness.Agent{Bin: b.Agent, LogDir: logs, Name: "agent-b", Cluster: "b", Node: "cp-1",
		AuditLog: auditLog, Aggregator: agg.Listen, TLS: certB}
	a.RunOnce(t, 2*time.Minute)
	keys := harness.KeysOf(wants)
	sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return harness.CountDistinct(r, keys) == len(keys) })
	harness.Report(t, "lockout", harness.Compare(sink.Records(), wants))
	t.Logf("%s", strings.Join(harness.MetricLines(agg.Metrics, "tokenwatch_aggregator_limit_violations_total"), "; "))
}

// clientCreds is an mTLS client configuration from the files of c.
func clientCreds(t *testing.T, c *harness.ClientTLS) credentials.TransportCredentials {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12})
}

// violations reads tokenwatch_aggregator_limit_violations_total{reason}.
func violations(metricsAddr, reason string) int {
	for _, l := range harness.MetricLines(metricsAddr, "tokenwatch_aggregator_limit_violations_total") {
		if !strings.Contains(l, `reason="`+reason+`"`) {
			continue
		}
		f := strings.Fields(l)
		n, _ := strconv.ParseFloat(f[len(f)-1], 64)
		return int(n)
	}
	return 0
}
