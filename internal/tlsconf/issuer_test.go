package tlsconf_test

import (
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/internal/devca"
)

// TestSpokeIntermediate: a fleet's hub gives spoke a an intermediate CA of
// its own (bound to cluster a by its SPIFFE ID, client auth only) so that
// the spoke renews its agents' certificates without the fleet CA's key. The
// aggregator, trusting only the fleet CA, accepts what the intermediate
// signs for a and nothing it signs for another cluster; agents refuse a
// server certificate it signs.
func TestSpokeIntermediate(t *testing.T) {
	dir := t.TempDir()
	root, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"hub"}})
	if err != nil {
		t.Fatal(err)
	}
	addr, srv := startServer(t, files.ServerCert, files.ServerKey, files.CA)
	spokeA, err := root.Intermediate("tokenwatch", "a")
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, must(t)(spokeA.Agent("tokenwatch", "a")), dir, "a-by-a")
	writePair(t, must(t)(spokeA.Agent("tokenwatch", "b")), dir, "b-by-a")
	writePair(t, must(t)(root.Agent("tokenwatch", "b")), dir, "b-by-root")

	p := func(n string) string { return filepath.Join(dir, n) }
	tests := []struct {
		name       string
		cert       string
		claim      string
		wantCode   codes.Code
		wantReason string
	}{
		{name: "spoke a's agent as a", cert: "a-by-a", claim: "a"},
		{name: "fleet CA's agent as b", cert: "b-by-root", claim: "b"},
		{name: "spoke a's intermediate signs for b", cert: "b-by-a", claim: "b",
			wantCode: codes.Unauthenticated, wantReason: "issuer_cluster_mismatch"},
		{name: "spoke a's intermediate signs for b, claims a", cert: "b-by-a", claim: "a",
			wantCode: codes.Unauthenticated, wantReason: "issuer_cluster_mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.refused.Store("")
			creds := clientCreds(t, p(tt.cert+".crt"), p(tt.cert+".key"), files.CA)
			got, err := hello(t, addr, creds, tt.claim)
			if tt.wantCode == codes.OK {
				if err != nil || got != tt.claim {
					t.Fatalf("hello(%q) = %q, %v, want %q", tt.claim, got, err, tt.claim)
				}
				return
			}
			if status.Code(err) != tt.wantCode {
				t.Fatalf("hello(%q) = %q, %v, want code %v", tt.claim, got, err, tt.wantCode)
			}
			if r := srv.refused.Load(); r != tt.wantReason {
				t.Errorf("server refusal reason = %q, want %q", r, tt.wantReason)
			}
		})
	}

	t.Run("spoke a's intermediate signs a server certificate", func(t *testing.T) {
		writePair(t, must(t)(spokeA.Server("localhost", "127.0.0.1")), dir, "server-by-a")
		fake, fakeSrv := startServer(t, p("server-by-a.crt"), p("server-by-a.key"), files.CA)
		before := fakeSrv.handled.Load()
		_, err := hello(t, fake, clientCreds(t, p("a-by-a.crt"), p("a-by-a.key"), files.CA), "a")
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("hello to a server certified by spoke a's intermediate: %v, want code %v (the agent refuses it)", err, codes.Unavailable)
		}
		if n := fakeSrv.handled.Load() - before; n != 0 {
			t.Errorf("handler ran %d times for a connection that should fail its handshake", n)
		}
	})
}
