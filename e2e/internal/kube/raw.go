package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
)

// RawMint is one TokenRequest sent as an HTTP request the test shapes
// itself, as a hostile client would.
type RawMint struct {
	Status  int    // HTTP status
	AuditID string // the Audit-Id response header
	Token   string // the minted token ("" unless 201)
}

// RawMintOptions shape a RawMint.
type RawMintOptions struct {
	// User authenticates with a client certificate for this user (in
	// Groups); empty: no credentials (system:anonymous).
	User   string
	Groups []string
	// AuditID is sent as the Audit-ID header when not empty: kube-apiserver
	// logs it as the event's auditID, as sent.
	AuditID string
	// Audiences of the TokenRequest's spec (default the apiserver's).
	Audiences []string
	// Body, when set, is sent as is instead of a TokenRequest built from
	// Audiences: JSON a client writes itself, unescaped.
	Body []byte
}

// RawMint POSTs a TokenRequest for ns/sa with o's identity, header and body.
func (c *Cluster) RawMint(t testing.TB, ctx context.Context, ns, sa string, o RawMintOptions) RawMint {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CA.CertPEM)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if o.User != "" {
		kp, err := c.CA.Issue(o.User, o.Groups)
		must(t, err)
		cert, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
		must(t, err)
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	if len(o.Audiences) == 0 {
		o.Audiences = []string{"https://kubernetes.default.svc"}
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"spec": map[string]any{"audiences": o.Audiences},
	})
	must(t, err)
	if o.Body != nil {
		body = o.Body
	}
	url := fmt.Sprintf("%s/api/v1/namespaces/%s/serviceaccounts/%s/token", c.Host, ns, sa)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	must(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenwatch-e2e/raw")
	if o.AuditID != "" {
		req.Header.Set("Audit-ID", o.AuditID)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("raw mint %s/%s as %q: %v", ns, sa, o.User, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	m := RawMint{Status: resp.StatusCode, AuditID: resp.Header.Get("Audit-Id")}
	if resp.StatusCode == http.StatusCreated {
		var tr struct {
			Status struct {
				Token string `json:"token"`
			} `json:"status"`
		}
		if err := json.Unmarshal(out, &tr); err == nil {
			m.Token = tr.Status.Token
		}
	}
	return m
}
