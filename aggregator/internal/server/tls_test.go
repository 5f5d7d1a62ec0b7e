package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// TestMTLS runs the aggregator with the contract's TLS flags: an agent
// certificate binds its stream to its cluster, a differing claim is refused.
func TestMTLS(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"prod"}})
	if err != nil {
		t.Fatal(err)
	}
	out := newSink(t)
	started := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Listen: "127.0.0.1:0", TLSCert: files.ServerCert, TLSKey: files.ServerKey, TLSClientCA: files.CA,
			TrustDomain: "tokenwatch", StateDir: t.TempDir(),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Stdout: out,
			Getenv:  func(string) string { return "" },
			Started: func(g, _ string) { started <- g },
		})
	}()
	var addr string
	select {
	case addr = <-started:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	creds, err := tlsconf.ClientCredentials(files.AgentCert["prod"], files.AgentKey["prod"], files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithAuthority("localhost"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	open := func(claimed string) (tokenwatchv1.AuditStreamService_StreamClient, *tokenwatchv1.StreamResponse, error) {
		st, err := tokenwatchv1.NewAuditStreamServiceClient(conn).Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: claimed, Node: "cp-1"}}}); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		return st, r, err
	}

	if _, _, err := open("staging"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("hello claiming staging with a prod certificate: %v, want PermissionDenied", err)
	}
	st, r, err := open("prod")
	if err != nil || r.GetWelcome().GetCluster() != "prod" {
		t.Fatalf("hello as prod: %v, %v", r, err)
	}
	a := &agent{st: st}
	a.send(t, []*tokenwatchv1.TokenEvent{event("alice", "t1", audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")})
	recs := out.waitFor(t, "t1", hasAuditID("t1"))
	if got := recs[0].Attrs["k8s.cluster.name"]; got != "prod" {
		t.Errorf("k8s.cluster.name = %q, want prod (from the certificate)", got)
	}
	_ = st.CloseSend()

	// A client without a certificate does not get through the handshake.
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c2, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	st2, err := tokenwatchv1.NewAuditStreamServiceClient(c2).Stream(ctx)
	if err == nil {
		_ = st2.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: "prod", Node: "cp-1"}}})
		_, err = st2.Recv()
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("stream without a client certificate: %v, want Unavailable (handshake refused)", err)
	}
}
