package hostile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

// agentCert writes an agent certificate signed by ca with the given SPIFFE
// ID, extended key usage and validity, as dir/name.crt and dir/name.key.
func agentCert(t *testing.T, ca *kube.CA, dir, name, spiffe string, eku x509.ExtKeyUsage, notBefore, notAfter time.Time) *harness.ClientTLS {
	t.Helper()
	u, err := url.Parse(spiffe)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{eku},
		URIs:        []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	kp := kube.KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}
	c, k, err := kp.Write(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return &harness.ClientTLS{Cert: c, Key: k, CA: filepath.Join(dir, "ca.crt")}
}

// labelledMetric returns the value of the sample of name whose labels contain
// label, or -1 when there is none.
func labelledMetric(addr, name, label string) float64 {
	for _, l := range harness.MetricLines(addr, name) {
		if !strings.HasPrefix(l, name+"{") || !strings.Contains(l, label) {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

func waitLabelled(t *testing.T, addr, name, label string, min float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := labelledMetric(addr, name, label)
		if v >= min {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s{%s} = %v, want at least %v", name, label, v, min)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readyStatus(addr string) int {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestCertificateTrouble is issue 15's point 3: certificate mistakes are
// named where the operator looks. An agent whose certificate binds another
// cluster or lacks client-auth usage exits 2 at start saying so; a foreign
// CA and a plaintext agent are counted and logged by the aggregator by
// reason, and the agent logs what is wrong instead of EOF; an expired
// certificate keeps the agent up and not ready until a renewal replaces
// it; both export their certificates' expiry.
func TestCertificateTrouble(t *testing.T) {
	bins := suite.Need(t)
	logs := harness.LogDir(t)
	dir := t.TempDir()
	ca, err := kube.NewCA("tokenwatch-e2e")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := kube.NewCA("someone-else")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	kp, err := ca.Issue("aggregator", nil, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	sc, sk, err := kp.Write(dir, "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	agg := harness.NewAggregator(t, bins, logs, "")
	agg.TLS = &harness.ServerTLS{Cert: sc, Key: sk, ClientCA: filepath.Join(dir, "ca.crt")}
	agg.Start(t)
	auditLog := harness.WriteFile(t, dir, "audit.log", "")

	now := time.Now()
	c1 := "spiffe://tokenwatch/cluster/c1"
	client := x509.ExtKeyUsageClientAuth
	agent := func(name string, tls *harness.ClientTLS) *harness.Agent {
		a := &harness.Agent{Bin: bins.Agent, LogDir: logs, Name: name, Cluster: "c1", Node: "cp-1",
			AuditLog: auditLog, Aggregator: agg.Listen, StateDir: filepath.Join(dir, name), TLS: tls,
			Metrics: harness.Addr(harness.FreePort(t))}
		a.Proc = harness.Start(t, logs, name, a.Bin, a.Args()...)
		return a
	}

	t.Run("exit 2 at start", func(t *testing.T) {
		tests := []struct {
			name, want string
			tls        *harness.ClientTLS
		}{
			{"other cluster", `certificate binds cluster "c2"`,
				agentCert(t, ca, dir, "c2", "spiffe://tokenwatch/cluster/c2", client, now.Add(-time.Hour), now.Add(time.Hour))},
			{"server auth only", "client-auth",
				agentCert(t, ca, dir, "server-usage", c1, x509.ExtKeyUsageServerAuth, now.Add(-time.Hour), now.Add(time.Hour))},
		}
		for _, tt := range tests {
			a := agent("agent-"+strings.ReplaceAll(tt.name, " ", "-"), tt.tls)
			if err := a.Proc.Wait(30 * time.Second); err == nil || !a.Proc.Exited() {
				t.Fatalf("%s: agent = %v, want it to exit 2", tt.name, err)
			}
			_, stderr := a.Proc.Output()
			if code := a.Proc.ExitCode(); code != 2 || !strings.Contains(string(stderr), tt.want) {
				t.Errorf("%s: exit %d, stderr %q; want exit 2 and %q", tt.name, code, stderr, tt.want)
			}
		}
	})

	t.Run("refused handshakes", func(t *testing.T) {
		tests := []struct {
			name, reason, class string
			tls                 *harness.ClientTLS
		}{
			{"foreign CA", "unknown_ca", "certificate_rejected",
				agentCert(t, foreign, dir, "foreign", c1, client, now.Add(-time.Hour), now.Add(time.Hour))},
			{"plaintext", "not_tls", "plaintext_refused", nil},
		}
		for _, tt := range tests {
			a := agent("agent-"+strings.ReplaceAll(tt.name, " ", "-"), tt.tls)
			if err := a.Proc.WaitStderr(`"class":"`+tt.class+`"`, 30*time.Second); err != nil {
				a.Proc.Dump(t)
				t.Errorf("%s: %v", tt.name, err)
			}
			waitLabelled(t, agg.Metrics, "tokenwatch_aggregator_tls_handshakes_rejected_total", `reason="`+tt.reason+`"`, 1, 10*time.Second)
			if err := agg.Proc.WaitStderr("agent TLS handshake rejected", 10*time.Second); err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			if code := readyStatus(a.Metrics); code != http.StatusServiceUnavailable {
				t.Errorf("%s: agent /readyz = %d, want 503", tt.name, code)
			}
			if err := a.Proc.Stop(10 * time.Second); err != nil {
				t.Errorf("%s: stop agent: %v", tt.name, err)
			}
		}
	})

	t.Run("expired until renewed", func(t *testing.T) {
		tls := agentCert(t, ca, dir, "renewed", c1, client, now.Add(-2*time.Hour), now.Add(-time.Hour))
		a := agent("agent-renewed", tls)
		if err := a.Proc.WaitStderr("agent certificate is not valid now", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		waitLabelled(t, agg.Metrics, "tokenwatch_aggregator_tls_handshakes_rejected_total", `reason="certificate_expired"`, 1, 10*time.Second)
		if a.Proc.Exited() || readyStatus(a.Metrics) != http.StatusServiceUnavailable {
			t.Fatalf("agent with an expired certificate: exited %v, /readyz %d; want up and 503", a.Proc.Exited(), readyStatus(a.Metrics))
		}
		if v := labelledMetric(a.Metrics, "tokenwatch_agent_certificate_expiry_timestamp_seconds", `certificate="client"`); int64(v) != now.Add(-time.Hour).Unix() {
			t.Errorf("agent certificate expiry = %v, want %d", v, now.Add(-time.Hour).Unix())
		}
		agentCert(t, ca, dir, "renewed", c1, client, now.Add(-time.Hour), now.Add(3*time.Hour))
		if err := a.Proc.WaitHTTP("http://"+a.Metrics+"/readyz", 60*time.Second); err != nil {
			a.Proc.Dump(t)
			t.Fatalf("after renewal: %v", err)
		}
		if v := labelledMetric(a.Metrics, "tokenwatch_agent_certificate_expiry_timestamp_seconds", `certificate="client"`); int64(v) != now.Add(3*time.Hour).Unix() {
			t.Errorf("renewed agent certificate expiry = %v, want %d", v, now.Add(3*time.Hour).Unix())
		}
	})

	if v := labelledMetric(agg.Metrics, "tokenwatch_aggregator_certificate_expiry_timestamp_seconds", `certificate="server"`); v <= float64(now.Unix()) {
		t.Errorf("aggregator server certificate expiry = %v, want a time after now", v)
	}
}
