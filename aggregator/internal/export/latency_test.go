package export

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// BenchmarkCommitToArrival measures the latency from a durable Commit of one
// record to its arrival at an OTLP/gRPC collector service on loopback,
// through the drainer (the contract's p99 target is 250 ms).
func BenchmarkCommitToArrival(b *testing.B) {
	st, err := state.OpenDir(b.TempDir(), state.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	sk, endpoint, _ := startSink(b, "127.0.0.1:0")
	exp, err := NewOTLP(context.Background(), Config{Endpoint: endpoint, Insecure: true})
	if err != nil {
		b.Fatal(err)
	}
	defer exp.Shutdown(context.Background())
	d, err := NewDrainer(st, exp, DrainerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.Run(context.Background()) }()
	defer func() {
		d.Shutdown(context.Background())
		<-errc
	}()

	var lat []time.Duration
	i := 0
	for b.Loop() {
		r := sampleRecords()[0]
		r.ID = fmt.Sprintf("lat-%d", i)
		i++
		start := time.Now()
		if _, err := st.Commit(state.Change{Records: []alert.Record{r}}); err != nil {
			b.Fatal(err)
		}
		for len(sk.records()) < i {
			<-sk.got
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkDrainThroughput measures records per second from a full outbox to
// an OTLP/gRPC collector service on loopback (batches of 512, one fsync per
// batch marked exported).
func BenchmarkDrainThroughput(b *testing.B) {
	st, err := state.OpenDir(b.TempDir(), state.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	sk, endpoint, _ := startSink(b, "127.0.0.1:0")
	exp, err := NewOTLP(context.Background(), Config{Endpoint: endpoint, Insecure: true})
	if err != nil {
		b.Fatal(err)
	}
	defer exp.Shutdown(context.Background())
	var recs []alert.Record
	for i := range b.N {
		r := sampleRecords()[0]
		r.ID = fmt.Sprintf("thr-%d", i)
		recs = append(recs, r)
	}
	if _, err := st.Commit(state.Change{Records: recs}); err != nil {
		b.Fatal(err)
	}
	d, err := NewDrainer(st, exp, DrainerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- d.Run(context.Background()) }()
	for len(sk.records()) < b.N {
		<-sk.got
	}
	elapsed := time.Since(start)
	b.StopTimer()
	d.Shutdown(context.Background())
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
}
