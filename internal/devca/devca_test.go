package devca

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

func TestWriteSet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	ca, files, err := WriteSet(dir, Set{Clusters: []string{"a", "b"}, TrustDomain: "example.org"})
	if err != nil {
		t.Fatalf("WriteSet: %v", err)
	}
	wantMode := map[string]os.FileMode{
		"ca.crt": 0o644, "server.crt": 0o644, "server.key": 0o600,
		"agent-a.crt": 0o644, "agent-a.key": 0o600, "agent-b.crt": 0o644, "agent-b.key": 0o600,
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(wantMode) {
		t.Errorf("WriteSet wrote %d files, want %d", len(entries), len(wantMode))
	}
	for name, mode := range wantMode {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("stat %s: %v", name, err)
			continue
		}
		if got := fi.Mode().Perm(); got != mode {
			t.Errorf("%s mode = %v, want %v", name, got, mode)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	srv := loadLeaf(t, files.ServerCert, files.ServerKey)
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("server certificate verifies for client auth, want server auth only")
	}
	for _, c := range []string{"a", "b"} {
		leaf := loadLeaf(t, files.AgentCert[c], files.AgentKey[c])
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("agent %s certificate: %v", c, err)
		}
		got, err := tlsconf.ClusterFromCert(leaf, "example.org")
		if err != nil || got != c {
			t.Errorf("ClusterFromCert(agent-%s) = %q, %v, want %q", c, got, err, c)
		}
		if leaf.NotAfter.After(time.Now().Add(LeafValidity)) || leaf.NotAfter.After(ca.Certificate().NotAfter) {
			t.Errorf("agent %s certificate NotAfter %v too late", c, leaf.NotAfter)
		}
	}
}

func loadLeaf(t *testing.T, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tlsconf.ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("ParseKeyPair(%s): %v", certFile, err)
	}
	return cert.Leaf
}

func TestServerNeedsHost(t *testing.T) {
	ca, err := New("ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Server(); err == nil {
		t.Error("Server() with no hosts = nil error, want error")
	}
}
