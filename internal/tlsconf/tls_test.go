package tlsconf_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// identityServer answers a Hello with a Welcome naming the cluster bound to
// the peer certificate, or with VerifyClaim's status error.
type identityServer struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	handled atomic.Int32
	refused atomic.Value // string: tlsconf.Reason of the last refusal
}

func (s *identityServer) Stream(stream tokenwatchv1.AuditStreamService_StreamServer) error {
	s.handled.Add(1)
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	cluster, err := tlsconf.VerifyClaim(stream.Context(), tlsconf.DefaultTrustDomain, req.GetHello().GetCluster())
	if err != nil {
		s.refused.Store(tlsconf.Reason(err))
		return err
	}
	return stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{
		Welcome: &tokenwatchv1.Welcome{Cluster: cluster},
	}})
}

// startServer serves identityServer with tlsconf.Server on loopback.
func startServer(t *testing.T, certFile, keyFile, caFile string) (addr string, srv *identityServer) {
	t.Helper()
	cfg, err := tlsconf.Server(certFile, keyFile, caFile, testLogger(t))
	if err != nil {
		t.Fatalf("Server: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	srv = &identityServer{}
	tokenwatchv1.RegisterAuditStreamServiceServer(gs, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis.Addr().String(), srv
}

// hello opens a fresh connection (a new TLS handshake), sends a Hello for
// cluster and returns the Welcome's cluster.
func hello(t *testing.T, addr string, creds credentials.TransportCredentials, cluster string) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := tokenwatchv1.NewAuditStreamServiceClient(conn).Stream(ctx)
	if err != nil {
		return "", err
	}
	// A failed Send reports io.EOF; the stream's real status comes from Recv.
	_ = stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{
		Hello: &tokenwatchv1.Hello{Cluster: cluster, Node: "n1"},
	}})
	resp, err := stream.Recv()
	if err != nil {
		return "", err
	}
	return resp.GetWelcome().GetCluster(), nil
}

func clientCreds(t *testing.T, certFile, keyFile, caFile string) credentials.TransportCredentials {
	t.Helper()
	creds, err := tlsconf.ClientCredentials(certFile, keyFile, caFile, testLogger(t))
	if err != nil {
		t.Fatalf("ClientCredentials: %v", err)
	}
	return creds
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func TestIdentityOverMTLS(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	addr, srv := startServer(t, files.ServerCert, files.ServerKey, files.CA)

	// Extra identities: a foreign CA's agent, foreign trust domain, no SAN.
	other, err := devca.New("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, must(t)(other.Agent("tokenwatch", "a")), dir, "foreign-ca")
	writePair(t, must(t)(ca.Agent("other-domain", "a")), dir, "foreign-td")
	writePair(t, must(t)(ca.Issue(devca.Leaf{CommonName: "a", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})), dir, "no-san")
	writePair(t, must(t)(ca.Server("localhost")), dir, "server-only")
	expiredID, _ := url.Parse(tlsconf.ClusterID("tokenwatch", "a"))
	writePair(t, must(t)(ca.Issue(devca.Leaf{CommonName: "a", URIs: []*url.URL{expiredID},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})), dir, "expired")

	p := func(n string) string { return filepath.Join(dir, n) }
	tests := []struct {
		name       string
		creds      credentials.TransportCredentials
		claim      string
		want       string
		wantCode   codes.Code
		wantReason string // server-side refusal; "" when the handshake fails first
	}{
		{name: "agent a as a", creds: clientCreds(t, p("agent-a.crt"), p("agent-a.key"), files.CA), claim: "a", want: "a"},
		{name: "agent b as b", creds: clientCreds(t, p("agent-b.crt"), p("agent-b.key"), files.CA), claim: "b", want: "b"},
		{name: "agent a claims b", creds: clientCreds(t, p("agent-a.crt"), p("agent-a.key"), files.CA), claim: "b",
			wantCode: codes.PermissionDenied, wantReason: "cluster_mismatch"},
		{name: "foreign trust domain", creds: clientCreds(t, p("foreign-td.crt"), p("foreign-td.key"), files.CA), claim: "a",
			wantCode: codes.Unauthenticated, wantReason: "foreign_trust_domain"},
		{name: "no SPIFFE SAN", creds: clientCreds(t, p("no-san.crt"), p("no-san.key"), files.CA), claim: "a",
			wantCode: codes.Unauthenticated, wantReason: "no_cluster_id"},
		{name: "foreign CA", creds: clientCreds(t, p("foreign-ca.crt"), p("foreign-ca.key"), files.CA), claim: "a",
			wantCode: codes.Unavailable},
		{name: "server-auth-only certificate as client", creds: clientCreds(t, p("server-only.crt"), p("server-only.key"), files.CA), claim: "a",
			wantCode: codes.Unavailable},
		{name: "expired agent certificate", creds: clientCreds(t, p("expired.crt"), p("expired.key"), files.CA), claim: "a",
			wantCode: codes.Unavailable},
		{name: "no client certificate", creds: noClientCert(t, files.CA), claim: "a", wantCode: codes.Unavailable},
		{name: "plaintext", creds: insecure.NewCredentials(), claim: "a", wantCode: codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.handled.Load()
			srv.refused.Store("")
			got, err := hello(t, addr, tt.creds, tt.claim)
			if tt.wantCode == codes.OK {
				if err != nil || got != tt.want {
					t.Fatalf("hello(%q) = %q, %v, want %q", tt.claim, got, err, tt.want)
				}
				return
			}
			if status.Code(err) != tt.wantCode {
				t.Fatalf("hello(%q) = %q, %v, want code %v", tt.claim, got, err, tt.wantCode)
			}
			if tt.wantReason == "" {
				if n := srv.handled.Load() - before; n != 0 {
					t.Errorf("handler ran %d times for a connection that should fail its handshake", n)
				}
				return
			}
			if r := srv.refused.Load(); r != tt.wantReason {
				t.Errorf("server refusal reason = %q, want %q", r, tt.wantReason)
			}
		})
	}
}

// noClientCert returns credentials that trust the CA but present no certificate.
func noClientCert(t *testing.T, caFile string) credentials.TransportCredentials {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}

func must(t *testing.T) func(devca.Pair, error) devca.Pair {
	return func(p devca.Pair, err error) devca.Pair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func writePair(t *testing.T, p devca.Pair, dir, name string) {
	t.Helper()
	if err := p.Write(dir, name); err != nil {
		t.Fatal(err)
	}
}

// secretDir mimics a Kubernetes secret volume: the visible files are
// symlinks through "..data", which is swapped atomically on each update.
type secretDir struct {
	t   *testing.T
	dir string
	gen int
}

func (s *secretDir) path(name string) string { return filepath.Join(s.dir, name) }

func (s *secretDir) update(files map[string][]byte) {
	s.t.Helper()
	s.gen++
	ts := filepath.Join(s.dir, fmt.Sprintf("..gen_%d", s.gen))
	if err := os.Mkdir(ts, 0o700); err != nil {
		s.t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o600); err != nil {
			s.t.Fatal(err)
		}
		link := filepath.Join(s.dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				s.t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(s.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "..data")); err != nil {
		s.t.Fatal(err)
	}
}

// TestRotationWithoutRestart swaps the server's certificate, key and client
// CA, and the agent's certificate, key and CA, to a new CA while both keep
// running: new connections use the new material and old agent certificates
// stop being accepted.
func TestRotationWithoutRestart(t *testing.T) {
	issue := func() (*devca.CA, devca.Pair, devca.Pair) {
		ca, err := devca.New("ca")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := ca.Server("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		agent, err := ca.Agent("tokenwatch", "a")
		if err != nil {
			t.Fatal(err)
		}
		return ca, srv, agent
	}
	ca1, srv1, agent1 := issue()
	ca2, srv2, agent2 := issue()

	server := &secretDir{t: t, dir: t.TempDir()}
	server.update(map[string][]byte{"tls.crt": srv1.CertPEM, "tls.key": srv1.KeyPEM, "ca.crt": ca1.CertPEM()})
	agent := &secretDir{t: t, dir: t.TempDir()}
	agent.update(map[string][]byte{"tls.crt": agent1.CertPEM, "tls.key": agent1.KeyPEM, "ca.crt": ca1.CertPEM()})

	addr, _ := startServer(t, server.path("tls.crt"), server.path("tls.key"), server.path("ca.crt"))
	creds := clientCreds(t, agent.path("tls.crt"), agent.path("tls.key"), agent.path("ca.crt"))
	// A static copy of the old agent material, as an agent that was not renewed.
	oldDir := t.TempDir()
	writePair(t, agent1, oldDir, "agent")
	if err := os.WriteFile(filepath.Join(oldDir, "ca.crt"), ca1.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	oldCreds := clientCreds(t, filepath.Join(oldDir, "agent.crt"), filepath.Join(oldDir, "agent.key"), filepath.Join(oldDir, "ca.crt"))

	if got, err := hello(t, addr, creds, "a"); err != nil || got != "a" {
		t.Fatalf("before rotation: hello = %q, %v, want a", got, err)
	}

	// Server first: it now presents a ca2 certificate and trusts only ca2.
	server.update(map[string][]byte{"tls.crt": srv2.CertPEM, "tls.key": srv2.KeyPEM, "ca.crt": ca2.CertPEM()})
	if _, err := hello(t, addr, creds, "a"); status.Code(err) != codes.Unavailable {
		t.Fatalf("server rotated, agent not: hello err = %v, want Unavailable", err)
	}
	// Then the agent's secret: the same credentials object picks it up.
	agent.update(map[string][]byte{"tls.crt": agent2.CertPEM, "tls.key": agent2.KeyPEM, "ca.crt": ca2.CertPEM()})
	if got, err := hello(t, addr, creds, "a"); err != nil || got != "a" {
		t.Fatalf("after rotation: hello = %q, %v, want a", got, err)
	}
	if _, err := hello(t, addr, oldCreds, "a"); status.Code(err) != codes.Unavailable {
		t.Fatalf("old agent certificate after rotation: err = %v, want Unavailable", err)
	}
}

// TestBrokenRenewalKeepsLastGood writes a certificate that does not match
// the key (a half-finished renewal): handshakes keep using the previous pair.
func TestBrokenRenewalKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"a"}, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startServer(t, files.ServerCert, files.ServerKey, files.CA)
	creds := clientCreds(t, files.AgentCert["a"], files.AgentKey["a"], files.CA)
	next, err := ca.Server("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := devca.WriteFile(files.ServerCert, next.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := hello(t, addr, creds, "a"); err != nil || got != "a" {
		t.Fatalf("mismatched renewal: hello = %q, %v, want a (previous pair kept)", got, err)
	}
	if err := devca.WriteFile(files.ServerKey, next.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := hello(t, addr, creds, "a"); err != nil || got != "a" {
		t.Fatalf("completed renewal: hello = %q, %v, want a", got, err)
	}
}

func TestConstructorsFailOnBadFiles(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := [][3]string{
		{missing, files.ServerKey, files.CA},
		{files.ServerCert, missing, files.CA},
		{files.ServerCert, files.ServerKey, missing},
		{files.ServerCert, files.ServerKey, garbage},
		{files.ServerCert, files.AgentKey["a"], files.CA},
		{"", "", files.CA},
	}
	for _, b := range bad {
		if _, err := tlsconf.Server(b[0], b[1], b[2], nil); err == nil {
			t.Errorf("Server(%q) = nil error, want error", b)
		}
		if b[2] != "" && b[0] != "" && b[1] != "" {
			if _, err := tlsconf.ClientCredentials(b[0], b[1], b[2], nil); err == nil {
				t.Errorf("ClientCredentials(%q) = nil error, want error", b)
			}
			if _, err := tlsconf.Client(b[0], b[1], b[2], nil); err == nil {
				t.Errorf("Client(%q) = nil error, want error", b)
			}
		}
	}
}

// TestClientConfig checks the bare *tls.Config from Client over gRPC.
func TestClientConfig(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startServer(t, files.ServerCert, files.ServerKey, files.CA)
	cfg, err := tlsconf.Client(files.AgentCert["a"], files.AgentKey["a"], files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := hello(t, addr, credentials.NewTLS(cfg), "a"); err != nil || got != "a" {
		t.Fatalf("hello = %q, %v, want a", got, err)
	}
	// By host name: the server certificate has localhost among its SANs.
	_, port, _ := net.SplitHostPort(addr)
	if got, err := hello(t, net.JoinHostPort("localhost", port), credentials.NewTLS(cfg), "a"); err != nil || got != "a" {
		t.Fatalf("hello via localhost = %q, %v, want a", got, err)
	}
}

// TestNoSessionResumption: a resumed TLS session would skip verifying the
// client certificate against the current CA bundle, so a peer holding a
// ticket could outlive a CA rotation. The server issues no tickets.
func TestNoSessionResumption(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"a"}, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	serverCfg, err := tlsconf.Server(files.ServerCert, files.ServerKey, files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("x")) // completes the handshake, sends any ticket
			_ = c.Close()
		}
	}()
	defer func() {
		lis.Close()
		<-done
	}()
	clientCfg, err := tlsconf.Client(files.AgentCert["a"], files.AgentKey["a"], files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	clientCfg.ServerName = "127.0.0.1"
	clientCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for i := range 2 {
		c, err := tls.Dial("tcp", lis.Addr().String(), clientCfg)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if c.ConnectionState().DidResume {
			t.Fatalf("connection %d resumed a TLS session", i)
		}
		c.Close()
	}
}
