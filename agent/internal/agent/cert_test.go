package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

func TestCheckCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, err := devca.New("test CA")
	if err != nil {
		t.Fatal(err)
	}
	id := func(s string) []*url.URL { u, _ := url.Parse(s); return []*url.URL{u} }
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	issue := func(name string, l devca.Leaf) string {
		t.Helper()
		p, err := ca.Issue(l)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Write(dir, name); err != nil {
			t.Fatal(err)
		}
		return dir + "/" + name + ".crt"
	}
	tests := []struct {
		name    string
		cert    string
		wantErr error
	}{
		{"matching", issue("ok", devca.Leaf{URIs: id("spiffe://tokenwatch/cluster/c1"), ExtKeyUsage: client}), nil},
		{"expired heals by renewal", issue("expired", devca.Leaf{URIs: id("spiffe://tokenwatch/cluster/c1"), ExtKeyUsage: client,
			NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}), nil},
		{"other cluster", issue("c2", devca.Leaf{URIs: id("spiffe://tokenwatch/cluster/c2"), ExtKeyUsage: client}), tlsconf.ErrClusterMismatch},
		{"server auth only", issue("server", devca.Leaf{URIs: id("spiffe://tokenwatch/cluster/c1"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), tlsconf.ErrNotClientCert},
	}
	for _, tt := range tests {
		c := Config{Cluster: "c1", TLSCert: tt.cert}
		err := c.CheckCertificate()
		if (tt.wantErr == nil) != (err == nil) || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: CheckCertificate() = %v, want %v", tt.name, err, tt.wantErr)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "--tls-cert") {
			t.Errorf("%s: CheckCertificate() = %v, want it to name --tls-cert", tt.name, err)
		}
	}

	classify := classifier(Config{Cluster: "c1", TLSCert: tests[1].cert})
	if f := classify(fmt.Errorf("open stream: %w", tlsconf.ErrRejectedByServer)); f.Class != classCertNotValid || f.Permanent {
		t.Errorf("classify with an expired certificate = %+v, want %s, not permanent", f, classCertNotValid)
	}
	classify = classifier(Config{Cluster: "c1", TLSCert: tests[0].cert})
	if f := classify(fmt.Errorf("open stream: %w", tlsconf.ErrRejectedByServer)); f.Class != classCertRejected || !f.Permanent {
		t.Errorf("classify of a rejected certificate = %+v, want %s, permanent", f, classCertRejected)
	}
}
