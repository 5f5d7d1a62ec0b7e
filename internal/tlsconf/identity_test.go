package tlsconf

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
)

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		give string
		ok   bool
	}{
		{"127.0.0.1:4317", true},
		{"127.3.2.1:1", true},
		{"[::1]:4317", true},
		{"localhost:4317", true},
		{"LOCALHOST:4317", true},
		{"[::ffff:127.0.0.1]:80", true},
		{":4317", false},
		{"0.0.0.0:4317", false},
		{"[::]:4317", false},
		{"10.0.0.1:4317", false},
		{"aggregator.example:4317", false},
		{"localhost.example:4317", false},
		{"[fe80::1%lo]:80", false},
		{"127.0.0.1", false},
		{"", false},
	}
	for _, tt := range tests {
		err := CheckLoopback(tt.give)
		if (err == nil) != tt.ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tt.give, err, tt.ok)
		}
	}
}

func TestParseClusterID(t *testing.T) {
	tests := []struct {
		give    string
		td      string
		want    string
		wantErr error
	}{
		{give: "spiffe://tokenwatch/cluster/prod-eu", td: "tokenwatch", want: "prod-eu"},
		{give: "spiffe://tokenwatch/cluster/A_b.1", td: "tokenwatch", want: "A_b.1"},
		{give: "spiffe://example.org/cluster/a", td: "example.org", want: "a"},
		{give: "spiffe://other/cluster/a", td: "tokenwatch", wantErr: ErrForeignTrustDomain},
		{give: "spiffe://tokenwatch.evil/cluster/a", td: "tokenwatch", wantErr: ErrForeignTrustDomain},
		{give: "spiffe://Tokenwatch/cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "SPIFFE://tokenwatch/cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch:443/cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://user@tokenwatch/cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch/cluster/a?x=1", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch/cluster/a#f", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch/cluster/a%2Fb", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch/cluster/../cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch/cluster//a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch/cluster/a/", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe:///cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "https://tokenwatch/cluster/a", td: "tokenwatch", wantErr: ErrMalformedID},
		{give: "spiffe://tokenwatch", td: "tokenwatch", wantErr: ErrNoClusterID},
		{give: "spiffe://tokenwatch/cluster", td: "tokenwatch", wantErr: ErrNoClusterID},
		{give: "spiffe://tokenwatch/cluster/a/b", td: "tokenwatch", wantErr: ErrNoClusterID},
		{give: "spiffe://tokenwatch/node/a", td: "tokenwatch", wantErr: ErrNoClusterID},
		{give: "spiffe://tokenwatch/Cluster/a", td: "tokenwatch", wantErr: ErrNoClusterID},
	}
	for _, tt := range tests {
		got, err := ParseClusterID(tt.give, tt.td)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ParseClusterID(%q, %q) = %q, %v, want error %v", tt.give, tt.td, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseClusterID(%q, %q) = %q, %v, want %q", tt.give, tt.td, got, err, tt.want)
		}
		if id := ClusterID(tt.td, got); id != tt.give {
			t.Errorf("ClusterID(%q, %q) = %q, want %q", tt.td, got, id, tt.give)
		}
	}
}

func TestClusterFromCert(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	tests := []struct {
		name    string
		uris    []string
		want    string
		wantErr error
	}{
		{name: "one id", uris: []string{"spiffe://tokenwatch/cluster/a"}, want: "a"},
		{name: "other schemes ignored", uris: []string{"https://example.org/x", "spiffe://tokenwatch/cluster/a"}, want: "a"},
		{name: "no uri", wantErr: ErrNoClusterID},
		{name: "only https", uris: []string{"https://tokenwatch/cluster/a"}, wantErr: ErrNoClusterID},
		{name: "two clusters", uris: []string{"spiffe://tokenwatch/cluster/a", "spiffe://tokenwatch/cluster/b"}, wantErr: ErrSeveralIDs},
		{name: "same cluster twice", uris: []string{"spiffe://tokenwatch/cluster/a", "spiffe://tokenwatch/cluster/a"}, wantErr: ErrSeveralIDs},
		{name: "ours and foreign", uris: []string{"spiffe://other/cluster/b", "spiffe://tokenwatch/cluster/a"}, wantErr: ErrSeveralIDs},
		{name: "foreign", uris: []string{"spiffe://other/cluster/a"}, wantErr: ErrForeignTrustDomain},
		// url.Parse (as x509 uses it) lower-cases the scheme; RFC 3986 schemes are case-insensitive.
		{name: "upper-case scheme", uris: []string{"SPIFFE://tokenwatch/cluster/a"}, want: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := &x509.Certificate{}
			for _, u := range tt.uris {
				cert.URIs = append(cert.URIs, mustURL(u))
			}
			got, err := ClusterFromCert(cert, "tokenwatch")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ClusterFromCert(%q) = %q, %v, want error %v", tt.uris, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ClusterFromCert(%q) = %q, %v, want %q", tt.uris, got, err, tt.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	for _, e := range []error{ErrNoPeerCertificate, ErrNoClusterID, ErrForeignTrustDomain, ErrSeveralIDs, ErrMalformedID, ErrClusterMismatch, ErrIssuerCluster} {
		if got := Reason(fmtWrap(e)); got == "other" {
			t.Errorf("Reason(%v) = other, want a specific label", e)
		}
	}
	if got := Reason(errors.New("x")); got != "other" {
		t.Errorf("Reason(x) = %q, want other", got)
	}
}

func fmtWrap(err error) error { return &claimError{err: err} }

func TestValidateNames(t *testing.T) {
	for _, td := range []string{"tokenwatch", "example.org", "a-b_c.d"} {
		if err := ValidateTrustDomain(td); err != nil {
			t.Errorf("ValidateTrustDomain(%q) = %v, want nil", td, err)
		}
	}
	for _, td := range []string{"", "Tokenwatch", "a/b", "a:1", "a b"} {
		if err := ValidateTrustDomain(td); err == nil {
			t.Errorf("ValidateTrustDomain(%q) = nil, want error", td)
		}
	}
	for _, c := range []string{"a", "prod-EU_1.x"} {
		if err := ValidateClusterName(c); err != nil {
			t.Errorf("ValidateClusterName(%q) = %v, want nil", c, err)
		}
	}
	for _, c := range []string{"", ".", "..", "a/b", "a b", "é"} {
		if err := ValidateClusterName(c); err == nil {
			t.Errorf("ValidateClusterName(%q) = nil, want error", c)
		}
	}
}

func TestCheckIssuers(t *testing.T) {
	ca := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true}
		for _, u := range uris {
			parsed, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, parsed)
		}
		return c
	}
	leaf := &x509.Certificate{}
	root := ca()
	tests := []struct {
		name    string
		chains  [][]*x509.Certificate
		wantErr error
	}{
		{name: "root only", chains: [][]*x509.Certificate{{leaf, root}}},
		{name: "leaf alone (self-signed, trusted as is)", chains: [][]*x509.Certificate{{leaf}}},
		{name: "intermediate of the same cluster", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch/cluster/a"), root}}},
		{name: "intermediate without SPIFFE ID", chains: [][]*x509.Certificate{{leaf, ca("https://example.org/ca"), root}}},
		{name: "intermediate of the trust domain", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch"), root}}},
		{name: "intermediate of another cluster", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch/cluster/b"), root}},
			wantErr: ErrIssuerCluster},
		{name: "root bound to another cluster", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch/cluster/b")}},
			wantErr: ErrIssuerCluster},
		{name: "two levels, the upper one elsewhere", chains: [][]*x509.Certificate{
			{leaf, ca("spiffe://tokenwatch/cluster/a"), ca("spiffe://tokenwatch/cluster/b"), root}}, wantErr: ErrIssuerCluster},
		{name: "foreign trust domain", chains: [][]*x509.Certificate{{leaf, ca("spiffe://other/cluster/a"), root}},
			wantErr: ErrIssuerCluster},
		{name: "other path", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch/node/a"), root}},
			wantErr: ErrIssuerCluster},
		{name: "several IDs", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch/cluster/a", "spiffe://tokenwatch/cluster/b"), root}},
			wantErr: ErrIssuerCluster},
		{name: "malformed ID", chains: [][]*x509.Certificate{{leaf, ca("spiffe://tokenwatch/cluster/a/"), root}},
			wantErr: ErrIssuerCluster},
		{name: "one good chain of two", chains: [][]*x509.Certificate{
			{leaf, ca("spiffe://tokenwatch/cluster/b"), root}, {leaf, ca("spiffe://tokenwatch/cluster/a"), root}}},
		{name: "no chain", wantErr: ErrNoPeerCertificate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckIssuers(tt.chains, "tokenwatch", "a")
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("CheckIssuers(cluster a) = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
