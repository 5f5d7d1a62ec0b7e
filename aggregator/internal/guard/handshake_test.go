package guard_test

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHandshakeRejectionsCountedAndLogged: a plaintext agent and one with a
// foreign CA's certificate, each trying twice, are counted by reason on the
// TLS server wrapped by Credentials, and each reason is logged once.
func TestHandshakeRejectionsCountedAndLogged(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"prod"}, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := devca.New("foreign")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := other.Agent("tokenwatch", "prod")
	if err != nil {
		t.Fatal(err)
	}
	if err := pair.Write(dir, "foreign"); err != nil {
		t.Fatal(err)
	}
	serverTLS, err := tlsconf.Server(files.ServerCert, files.ServerKey, files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	g, err := guard.New(guard.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, reg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(g.ServerOptions(), grpc.Creds(g.Credentials(credentials.NewTLS(serverTLS))))...)
	tokenwatchv1.RegisterAuditStreamServiceServer(gs, ackServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	f := &fixture{addr: lis.Addr().String(), reg: reg, g: g}

	foreign, err := tlsconf.ClientCredentials(dir+"/foreign.crt", dir+"/foreign.key", files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		for _, creds := range []credentials.TransportCredentials{insecure.NewCredentials(), foreign} {
			conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := open(t, conn, "prod", "n1"); err == nil {
				t.Fatal("stream opened without a valid client certificate")
			}
			conn.Close()
		}
	}
	counted := func(reason string) float64 {
		return f.metric("tokenwatch_aggregator_tls_handshakes_rejected_total", reason)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (counted(tlsconf.HandshakeNotTLS) < 2 || counted(tlsconf.HandshakeUnknownCA) < 2) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, r := range []string{tlsconf.HandshakeNotTLS, tlsconf.HandshakeUnknownCA} {
		if n := counted(r); n < 2 {
			t.Errorf("handshakes rejected{reason=%q} = %v, want at least 2", r, n)
		}
		if n := strings.Count(logs.String(), "reason="+r); n != 1 {
			t.Errorf("log lines with reason=%s: %d, want 1 (rate-limited); log:\n%s", r, n, logs.String())
		}
	}
}
