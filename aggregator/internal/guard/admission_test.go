package guard_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// startTLS serves cfg over mTLS with agent certificates for clusters; dial
// gives a new connection with a cluster's certificate.
func startTLS(t *testing.T, cfg guard.Config, clusters ...string) (f *fixture, dial func(cluster string) *grpc.ClientConn) {
	t.Helper()
	_, files, err := devca.WriteSet(t.TempDir(), devca.Set{Clusters: clusters, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := tlsconf.Server(files.ServerCert, files.ServerKey, files.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := func(cluster string) credentials.TransportCredentials {
		c, err := tlsconf.ClientCredentials(files.AgentCert[cluster], files.AgentKey[cluster], files.CA, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	f = startWith(t, cfg, creds(clusters[0]), []grpc.ServerOption{grpc.Creds(credentials.NewTLS(serverTLS))})
	return f, func(cluster string) *grpc.ClientConn { return f.dialWith(t, creds(cluster)) }
}

// admissions returns a channel that receives each admission decision.
func admissions(f *fixture) <-chan error {
	ch := make(chan error, 4096)
	f.g.SetAdmitted(func(err error) { ch <- err })
	return ch
}

// flood opens n streams of method on conns (round robin) that never send
// anything, and waits until the server decided on each; it returns how many
// were admitted.
func flood(t *testing.T, decided <-chan error, n int, open func(i int) error) (admitted int) {
	t.Helper()
	for i := range n {
		if err := open(i); err != nil {
			t.Fatalf("open stream %d: %v", i, err)
		}
	}
	for range n {
		if err := <-decided; err == nil {
			admitted++
		} else if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("refusal %v, want ResourceExhausted", err)
		}
	}
	return admitted
}

// silentStreams opens agent streams over several connections of dial
// (MaxStreamsPerConn bounds one connection) that never send a Hello.
func silentStreams(t *testing.T, conns []*grpc.ClientConn) func(i int) error {
	return func(i int) error {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		_, err := tokenwatchv1.NewAuditStreamServiceClient(conns[i%len(conns)]).Stream(ctx)
		return err
	}
}

func watches(t *testing.T, conns []*grpc.ClientConn) func(i int) error {
	return func(i int) error {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		_, err := healthpb.NewHealthClient(conns[i%len(conns)]).Watch(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
}

func conns(n int, dial func() *grpc.ClientConn) []*grpc.ClientConn {
	out := make([]*grpc.ClientConn, n)
	for i := range out {
		out[i] = dial()
	}
	return out
}

// TestSilentStreamsDoNotLockOthersOut: more streams than the server's
// limit, from one certificate, that never send a Hello, hold at most that
// certificate's share (MaxStreamsPerCluster); another cluster's agent still
// gets in.
func TestSilentStreamsDoNotLockOthersOut(t *testing.T) {
	const maxStreams, perCluster, perConn = 6, 2, 4
	f, dial := startTLS(t, guard.Config{MaxStreams: maxStreams, MaxStreamsPerCluster: perCluster, MaxStreamsPerConn: perConn}, "evil", "prod")
	decided := admissions(f)
	evil := conns(4, func() *grpc.ClientConn { return dial("evil") })
	if got := flood(t, decided, maxStreams+2, silentStreams(t, evil)); got > perCluster {
		t.Errorf("one certificate holds %d silent streams, want at most %d", got, perCluster)
	}
	a := mustOpen(t, dial("prod"), "prod", "cp-1")
	if err := a.send(1, 0); err != nil {
		t.Fatalf("prod agent next to %d silent streams: %v", maxStreams+2, err)
	}
	if got := f.violations(guard.ReasonTooManyPeerStreams); got != maxStreams+2-perCluster {
		t.Errorf("%s violations = %v, want %d", guard.ReasonTooManyPeerStreams, got, maxStreams+2-perCluster)
	}
}

// TestHealthWatchesDoNotLockAgentsOut: health watches have their own pool,
// a certificate at most MaxHealthWatchesPerPeer of it: watches from one
// certificate neither take agent streams nor all the watches.
func TestHealthWatchesDoNotLockAgentsOut(t *testing.T) {
	const maxStreams, perConn = 4, 4
	f, dial := startTLS(t, guard.Config{MaxStreams: maxStreams, MaxStreamsPerCluster: 2, MaxStreamsPerConn: perConn,
		MaxHealthWatches: 4, MaxHealthWatchesPerPeer: 2}, "evil", "prod", "ops")
	decided := admissions(f)
	evil := conns(3, func() *grpc.ClientConn { return dial("evil") })
	if got := flood(t, decided, 3*perConn, watches(t, evil)); got > 2 {
		t.Errorf("one certificate holds %d health watches, want at most 2", got)
	}
	a := mustOpen(t, dial("prod"), "prod", "cp-1")
	if err := a.send(1, 0); err != nil {
		t.Fatalf("prod agent next to the watches: %v", err)
	}
	<-decided // the prod stream's
	w, err := healthpb.NewHealthClient(dial("ops")).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if err != nil {
		t.Fatalf("another certificate's health watch: %v", err)
	}
	if got := f.violations(guard.ReasonTooManyWatches); got != 3*perConn-2 {
		t.Errorf("%s violations = %v, want %d", guard.ReasonTooManyWatches, got, 3*perConn-2)
	}
}

// TestHelloTimeout: a stream that sends no Hello within HelloTimeout ends
// with DeadlineExceeded and frees its slots.
func TestHelloTimeout(t *testing.T) {
	f, dial := startTLS(t, guard.Config{HelloTimeout: 50 * time.Millisecond, MaxStreamsPerCluster: 1, MaxStreams: 1}, "evil", "prod")
	decided := admissions(f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := tokenwatchv1.NewAuditStreamServiceClient(dial("evil")).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, "silent stream", err, codes.DeadlineExceeded, "no hello within")
	if err := <-decided; err != nil {
		t.Fatalf("silent stream refused (%v), want admitted until its deadline", err)
	}
	if got := f.violations(guard.ReasonHelloTimeout); got != 1 {
		t.Errorf("%s violations = %v, want 1", guard.ReasonHelloTimeout, got)
	}
	// Its slot (the only one) is free again; a Hello in time is served.
	a := mustOpen(t, dial("prod"), "prod", "cp-1")
	if err := a.send(1, 0); err != nil {
		t.Fatalf("agent after the timed-out stream: %v", err)
	}
}
