package tlsconf

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// FuzzParseClusterID: never panics; an accepted ID round-trips through
// ClusterID and its name is a valid cluster name.
func FuzzParseClusterID(f *testing.F) {
	for _, s := range []string{
		"spiffe://tokenwatch/cluster/a",
		"spiffe://tokenwatch/cluster/a/b",
		"spiffe://tokenwatch:1/cluster/a",
		"spiffe://tokenwatch/cluster/%2e%2e",
		"spiffe://tokenwatch/cluster/a?b#c",
		"spiffe://",
	} {
		f.Add(s, "tokenwatch")
	}
	f.Fuzz(func(t *testing.T, id, td string) {
		name, err := ParseClusterID(id, td)
		if err != nil {
			return
		}
		if got := ClusterID(td, name); got != id {
			t.Fatalf("ParseClusterID(%q, %q) = %q, but ClusterID gives %q", id, td, name, got)
		}
		if err := ValidateClusterName(name); err != nil {
			t.Fatalf("ParseClusterID(%q, %q) = %q, not a valid cluster name: %v", id, td, name, err)
		}
		if err := ValidateTrustDomain(td); err != nil {
			t.Fatalf("ParseClusterID(%q, %q) accepted an invalid trust domain: %v", id, td, err)
		}
	})
}

// FuzzParseCertificates: never panics; an accepted bundle is PEM
// certificates only, each of which parsed.
func FuzzParseCertificates(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ParseCertificates(data)
		if err != nil {
			return
		}
		if len(certs) == 0 {
			t.Fatal("ParseCertificates accepted a bundle without certificates")
		}
		if bytes.Count(data, []byte("-----BEGIN")) < len(certs) {
			t.Fatalf("ParseCertificates found %d certificates in fewer PEM blocks", len(certs))
		}
	})
}

// FuzzParseKeyPair: never panics on arbitrary PEM input.
func FuzzParseKeyPair(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		cert, err := ParseKeyPair(certPEM, keyPEM)
		if err == nil && cert.Leaf == nil {
			t.Fatal("ParseKeyPair accepted a pair without setting Leaf")
		}
	})
}

// FuzzCheckLoopback: an accepted address is localhost or a loopback IP.
func FuzzCheckLoopback(f *testing.F) {
	for _, s := range []string{"127.0.0.1:1", "[::1]:1", "localhost:1", ":1", "0.0.0.0:1", "[::ffff:127.0.0.1]:1", "[fe80::1%lo]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		if CheckLoopback(addr) != nil {
			return
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("CheckLoopback(%q) accepted an address SplitHostPort rejects: %v", addr, err)
		}
		if strings.EqualFold(host, "localhost") {
			return
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Unmap().IsLoopback() {
			t.Fatalf("CheckLoopback(%q) accepted a non-loopback host", addr)
		}
	})
}
