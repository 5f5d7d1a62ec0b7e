package loadgen

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a stub aggregator: it welcomes, checks batch order, records
// events and acknowledges each batch.
type recorder struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer

	mu     sync.Mutex
	hellos map[string]bool // cluster/node
	ids    map[string]bool
	users  map[string]int
	errs   []string
}

func (r *recorder) Stream(st grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	h := first.GetHello()
	r.mu.Lock()
	r.hellos[h.Cluster+"/"+h.Node] = true
	r.mu.Unlock()
	if err := st.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: &tokenwatchv1.Welcome{Cluster: h.Cluster}}}); err != nil {
		return err
	}
	var next uint64 = 1
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b := req.GetBatch()
		r.mu.Lock()
		if b.Seq != next {
			r.errs = append(r.errs, "batch out of order")
		}
		next++
		for _, e := range b.Events {
			if r.ids[e.AuditId] {
				r.errs = append(r.errs, "audit ID repeated: "+e.AuditId)
			}
			r.ids[e.AuditId] = true
			r.users[e.GetUser().GetUsername()]++
		}
		r.mu.Unlock()
		if err := st.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}}); err != nil {
			return err
		}
	}
}

func TestRun(t *testing.T) {
	mix, err := NewMix(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range mix.Excluded {
		if u := e.GetUser().GetUsername(); !strings.HasPrefix(u, "system:") {
			t.Errorf("excluded pool holds %q, want only system identities", u)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{hellos: map[string]bool{}, ids: map[string]bool{}, users: map[string]int{}}
	srv := grpc.NewServer()
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, rec)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	defer func() {
		srv.Stop()
		<-done
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{
		Target: lis.Addr().String(),
		Creds: func(string) (credentials.TransportCredentials, error) {
			return insecure.NewCredentials(), nil
		},
		Streams: 5, Clusters: 2, EventsPerStream: 1000, BatchEvents: 64, Window: 2, Mix: mix,
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 5000 || res.Alerting != 50 || res.Elapsed <= 0 {
		t.Errorf("Run = %+v, want 5000 events of which 50 alerting", res)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.errs) > 0 {
		t.Errorf("aggregator saw: %v", rec.errs[:min(len(rec.errs), 5)])
	}
	if len(rec.ids) != 5000 || len(rec.hellos) != 5 || !rec.hellos["bench-1/node-3"] {
		t.Errorf("aggregator got %d distinct events and hellos %v", len(rec.ids), rec.hellos)
	}
	nonSystem := 0
	for u, n := range rec.users {
		if !strings.HasPrefix(u, "system:") {
			nonSystem += n
		}
	}
	if nonSystem > 50 {
		t.Errorf("%d events of non-system users, want at most the 50 alerting ones", nonSystem)
	}
}
