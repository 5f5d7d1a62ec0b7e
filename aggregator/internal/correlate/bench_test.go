package correlate

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// hotKey returns n token requests of one user from one source address in
// three clusters for many service accounts, 10 ms apart (n = 100,000 spans
// about 17 minutes of event time, more than one window). With batched
// true they arrive as the aggregator sees them from three agents: 100 of
// one cluster, then 100 of the next, so each cluster's events are in order
// but every batch starts up to 3 s behind the newest event of the key.
func hotKey(n int, batched bool) []Event {
	evs := make([]Event, 0, n)
	ev := func(i int) Event {
		return Event{
			Time:      t0.Add(time.Duration(i) * 10 * time.Millisecond),
			Cluster:   fmt.Sprint("cluster-", i%3),
			User:      "system:serviceaccount:ci:deployer",
			SourceIP:  "198.51.100.7",
			Namespace: fmt.Sprint("team-", i%50),
			Name:      fmt.Sprint("sa-", i%2000),
			AuditID:   fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i),
		}
	}
	const chunk = 300
	for start := 0; start < n; start += chunk {
		for c := 0; c < 3; c++ {
			for i := start; i < min(start+chunk, n); i++ {
				if !batched && c > 0 {
					break
				}
				if batched && i%3 != c {
					continue
				}
				evs = append(evs, ev(i))
			}
		}
	}
	return evs
}

type observer interface {
	Observe(Event) []alert.Record
	Expire(time.Time)
}

// BenchmarkObserveHotKey feeds 100,000 events of one hot key (all three
// kinds) with the default thresholds, expiring every 1,000 events as the
// pipeline does once a second; it reports ns per event for this correlator
// and for the baseline (the algorithm before, in baseline_test.go).
func BenchmarkObserveHotKey(b *testing.B) {
	const n = 100000
	cfg := Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2, ServiceAccounts: 5}
	for _, order := range []struct {
		name    string
		batched bool
	}{{"in_order", false}, {"batched_3_clusters", true}} {
		evs := hotKey(n, order.batched)
		for _, impl := range []struct {
			name string
			make func() observer
		}{
			{"baseline", func() observer { return newBaseline(cfg) }},
			{"current", func() observer { return New(cfg) }},
		} {
			b.Run(order.name+"/"+impl.name, func(b *testing.B) {
				records := 0
				for b.Loop() {
					c := impl.make()
					records = 0
					for i, ev := range evs {
						records += len(c.Observe(ev))
						if i%1000 == 999 {
							c.Expire(ev.Time)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
				b.ReportMetric(float64(records), "records")
			})
		}
	}
}
