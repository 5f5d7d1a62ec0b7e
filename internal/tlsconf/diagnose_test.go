package tlsconf_test

import (
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// recordingCreds keeps the server-side handshake errors.
type recordingCreds struct {
	credentials.TransportCredentials
	mu   sync.Mutex
	errs []error
}

func (c *recordingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.mu.Lock()
		c.errs = append(c.errs, err)
		c.mu.Unlock()
	}
	return conn, info, err
}

func (c *recordingCreds) reasons() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, err := range c.errs {
		out = append(out, tlsconf.HandshakeReason(err))
	}
	c.errs = nil
	return out
}

// TestHandshakeDiagnosis: each way an agent's TLS can be wrong is named on
// both ends: the server classifies its failed handshake, and the client
// learns that its certificate was refused instead of a bare EOF.
func TestHandshakeDiagnosis(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := devca.New("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse(tlsconf.ClusterID("tokenwatch", "a"))
	clientOnly := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	writePair(t, must(t)(other.Agent("tokenwatch", "a")), dir, "foreign-ca")
	writePair(t, must(t)(ca.Issue(devca.Leaf{CommonName: "a", URIs: []*url.URL{id}, ExtKeyUsage: clientOnly,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})), dir, "expired")
	writePair(t, must(t)(ca.Issue(devca.Leaf{CommonName: "a", URIs: []*url.URL{id}, ExtKeyUsage: clientOnly,
		NotBefore: time.Now().Add(24 * time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})), dir, "future")
	writePair(t, must(t)(ca.Issue(devca.Leaf{CommonName: "a", URIs: []*url.URL{id},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})), dir, "server-usage")
	writePair(t, must(t)(other.Server("127.0.0.1")), dir, "foreign-server")

	cfg, err := tlsconf.Server(files.ServerCert, files.ServerKey, files.CA, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingCreds{TransportCredentials: credentials.NewTLS(cfg)}
	addr := serve(t, rec)
	cfgF, err := tlsconf.Server(filepath.Join(dir, "foreign-server.crt"), filepath.Join(dir, "foreign-server.key"), files.CA, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	recF := &recordingCreds{TransportCredentials: credentials.NewTLS(cfgF)}
	addrF := serve(t, recF)

	p := func(n string) string { return filepath.Join(dir, n) }
	tests := []struct {
		name       string
		creds      credentials.TransportCredentials
		addr       string
		rec        *recordingCreds
		wantServer string
		wantClient string // in the client's error
	}{
		{"foreign CA", clientCreds(t, p("foreign-ca.crt"), p("foreign-ca.key"), files.CA), addr, rec,
			tlsconf.HandshakeUnknownCA, "unknown certificate authority"},
		{"expired", clientCreds(t, p("expired.crt"), p("expired.key"), files.CA), addr, rec,
			tlsconf.HandshakeExpired, "did not accept this agent's certificate"},
		{"not yet valid", clientCreds(t, p("future.crt"), p("future.key"), files.CA), addr, rec,
			tlsconf.HandshakeNotYetValid, "did not accept this agent's certificate"},
		{"server auth only", clientCreds(t, p("server-usage.crt"), p("server-usage.key"), files.CA), addr, rec,
			tlsconf.HandshakeBadUsage, "did not accept this agent's certificate"},
		{"no client certificate", noClientCert(t, files.CA), addr, rec, tlsconf.HandshakeNoCertificate, ""},
		{"plaintext", insecure.NewCredentials(), addr, rec, tlsconf.HandshakeNotTLS, ""},
		{"server from a foreign CA", clientCreds(t, p("agent-a.crt"), p("agent-a.key"), files.CA), addrF, recF,
			tlsconf.HandshakePeerRejected, "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := hello(t, tt.addr, tt.creds, "a")
			if err == nil {
				t.Fatal("hello succeeded, want a failed handshake")
			}
			if tt.wantClient != "" && !strings.Contains(err.Error(), tt.wantClient) {
				t.Errorf("client error = %v, want it to say %q", err, tt.wantClient)
			}
			deadline := time.Now().Add(5 * time.Second)
			var got []string
			for len(got) == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				got = tt.rec.reasons()
			}
			if len(got) == 0 || got[0] != tt.wantServer {
				t.Errorf("server handshake reasons = %v, want %q", got, tt.wantServer)
			}
		})
	}
}

func serve(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(creds))
	tokenwatchv1.RegisterAuditStreamServiceServer(gs, &identityServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis.Addr().String()
}

func TestCheckAgentCertificate(t *testing.T) {
	ca, err := devca.New("test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(l devca.Leaf) *x509.Certificate {
		t.Helper()
		p := must(t)(ca.Issue(l))
		c, err := tlsconf.ParseKeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf
	}
	uri := func(s string) []*url.URL { u, _ := url.Parse(s); return []*url.URL{u} }
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	tests := []struct {
		name    string
		give    *x509.Certificate
		wantErr error
	}{
		{"matching", leaf(devca.Leaf{URIs: uri("spiffe://tokenwatch/cluster/a"), ExtKeyUsage: client}), nil},
		{"other trust domain is not the agent's to judge", leaf(devca.Leaf{URIs: uri("spiffe://example.org/cluster/a"), ExtKeyUsage: client}), nil},
		{"both usages", leaf(devca.Leaf{URIs: uri("spiffe://tokenwatch/cluster/a")}), nil},
		{"other cluster", leaf(devca.Leaf{URIs: uri("spiffe://tokenwatch/cluster/b"), ExtKeyUsage: client}), tlsconf.ErrClusterMismatch},
		{"no SPIFFE ID", leaf(devca.Leaf{ExtKeyUsage: client}), tlsconf.ErrNoClusterID},
		{"not a cluster ID", leaf(devca.Leaf{URIs: uri("spiffe://tokenwatch/node/a"), ExtKeyUsage: client}), tlsconf.ErrNoClusterID},
		{"server auth only", leaf(devca.Leaf{URIs: uri("spiffe://tokenwatch/cluster/a"), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), tlsconf.ErrNotClientCert},
	}
	for _, tt := range tests {
		err := tlsconf.CheckAgentCertificate(tt.give, "a")
		if (tt.wantErr == nil) != (err == nil) || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: CheckAgentCertificate = %v, want %v", tt.name, err, tt.wantErr)
		}
	}
	expired := leaf(devca.Leaf{NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err := tlsconf.CheckValidity(expired, time.Now()); !errors.Is(err, tlsconf.ErrExpired) {
		t.Errorf("CheckValidity(expired) = %v, want %v", err, tlsconf.ErrExpired)
	}
	future := leaf(devca.Leaf{NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(2 * time.Hour)})
	if err := tlsconf.CheckValidity(future, time.Now()); !errors.Is(err, tlsconf.ErrNotYetValid) {
		t.Errorf("CheckValidity(future) = %v, want %v", err, tlsconf.ErrNotYetValid)
	}
}
