package correlate

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// Arrival orders of hotKey.
const (
	inOrder  = "in_order"
	batched  = "batched_3_clusters"
	lagging  = "lagging_cluster"
	lagBy    = 12 * time.Minute
	hotCount = 100000
)

// hotKey returns n token requests of one user from one source address in
// three clusters for many service accounts, step apart (100,000 10 ms apart
// span about 17 minutes of event time, more than one window), in the order
// the aggregator receives them:
//   - inOrder: by time;
//   - batched: as from three agents, 100 of one cluster, then 100 of the
//     next, so each cluster's events are in order but every batch starts up
//     to 3 s behind the newest event of the key;
//   - lagging: by time, but the third cluster's agent is lagBy behind (it
//     catches up after a network cut), more than a window.
func hotKey(n int, step time.Duration, order string) []Event {
	evs := make([]Event, 0, n)
	ev := func(i int) Event {
		return Event{
			Time:      t0.Add(time.Duration(i) * step),
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
				if order != batched && c > 0 {
					break
				}
				if order == batched && i%3 != c {
					continue
				}
				evs = append(evs, ev(i))
			}
		}
	}
	if order == lagging {
		sort.SliceStable(evs, func(i, j int) bool { return arrival(evs[i]).Before(arrival(evs[j])) })
	}
	return evs
}

// arrival is when the aggregator receives ev of hotKey(n, step, lagging), on the
// clock of event time.
func arrival(ev Event) time.Time {
	if ev.Cluster == "cluster-2" {
		return ev.Time.Add(lagBy)
	}
	return ev.Time
}

type observer interface {
	Observe(time.Time, Event) []alert.Record
	Expire(time.Time)
}

// BenchmarkObserveHotKey feeds 100,000 events of one hot key (all three
// kinds) with the default thresholds in each arrival order, expiring every
// 1,000 events as the pipeline does once a second; it reports ns per event
// for this correlator and for the baseline (the algorithm before, in
// baseline_test.go), which takes minutes on the batched order.
func BenchmarkObserveHotKey(b *testing.B) {
	const n = hotCount
	cfg := Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2, ServiceAccounts: 5}
	for _, order := range []string{inOrder, batched, lagging} {
		evs := hotKey(n, 10*time.Millisecond, order)
		for _, impl := range []struct {
			name string
			make func() observer
		}{
			{"baseline", func() observer { return newBaseline(cfg) }},
			{"current", func() observer { return New(cfg) }},
		} {
			b.Run(order+"/"+impl.name, func(b *testing.B) {
				records := 0
				for b.Loop() {
					c := impl.make()
					records = 0
					for i, ev := range evs {
						records += len(c.Observe(later, ev))
						if i%1000 == 999 {
							c.Expire(arrival(ev))
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
				b.ReportMetric(float64(records), "records")
			})
		}
	}
}
