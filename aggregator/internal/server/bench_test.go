package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// BenchmarkIngest streams batches of 500 events, 99% excluded system
// identities and 1% alerting requests (distinct users and source IPs), from
// several agents (one cluster each) over loopback
// gRPC (plaintext) into the whole aggregator with its durable store (fsync
// on) and the stdout exporter writing to io.Discard. The per-agent rate
// limits are raised; everything else is the default.
func BenchmarkIngest(b *testing.B) {
	for _, streams := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) { benchIngest(b, streams) })
	}
}

func benchIngest(b *testing.B, streams int) {
	gc := guard.DefaultConfig()
	gc.EventsPerSecond, gc.EventBurst = 1e9, 1e9
	gc.MessagesPerSecond, gc.MessageBurst = 1e9, 1e9
	started := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Listen: "127.0.0.1:0", Insecure: true, StateDir: b.TempDir(), TrustDomain: "tokenwatch",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Stdout: io.Discard,
			Getenv: func(string) string { return "" }, Guard: &gc,
			Started: func(g, _ string) { started <- g },
		})
	}()
	addr := <-started
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()

	const perBatch = 500
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for s := range streams {
		wg.Go(func() {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			st, err := tokenwatchv1.NewAuditStreamServiceClient(conn).Stream(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			cluster := "c" + strconv.Itoa(s)
			_ = st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: cluster, Node: "cp-1"}}})
			if _, err := st.Recv(); err != nil {
				b.Error(err)
				return
			}
			var seq uint64
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					_ = st.CloseSend()
					return
				}
				evs := make([]*tokenwatchv1.TokenEvent, perBatch)
				for i := range evs {
					id := strconv.FormatInt(n, 10) + "-" + strconv.Itoa(i)
					if i%100 == 0 {
						// Distinct users and sources: this measures ingest,
						// not the correlator's hot keys.
						evs[i] = event("user-"+id, id, audit.StageResponseComplete, 201, "team-a", "builder", "10."+strconv.Itoa(int(n)%250)+".0."+strconv.Itoa(i/100+1))
					} else {
						evs[i] = event("system:node:cp-1", id, audit.StageResponseComplete, 201, "kube-system", "coredns", "10.0.0.1")
						evs[i].User.Groups = []string{"system:nodes", "system:authenticated"}
					}
				}
				seq++
				if err := st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: seq, Events: evs}}}); err != nil {
					b.Error(err)
					return
				}
				if _, err := st.Recv(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
}
