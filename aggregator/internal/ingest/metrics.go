package ingest

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	streams     prometheus.Gauge
	batches     prometheus.Counter
	events      prometheus.Counter
	heartbeats  prometheus.Counter
	batchErrors prometheus.Counter
	refused     *prometheus.CounterVec
	buffered    prometheus.GaugeFunc
	budgetWaits prometheus.CounterFunc

	lineageStreams prometheus.GaugeFunc
	watchUpdates   prometheus.Counter
	lineageDropped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, b *budget, f *fleet) *metrics {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwatch_aggregator_streams",
			Help: "Agent streams currently open.",
		}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_batches_acked_total",
			Help: "Batches recorded and acknowledged.",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_events_received_total",
			Help: "Events received in acknowledged batches.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_heartbeats_total",
			Help: "Heartbeats received.",
		}),
		batchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_batch_errors_total",
			Help: "Batches that could not be recorded (the stream is ended; the agent resends).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_streams_refused_total",
			Help: "Streams refused, by reason (cluster_mismatch: the claimed cluster differs from the certificate; node_in_use: another live stream names the same node; too_many_nodes: limits.max_nodes_per_cluster).",
		}, []string{"reason"}),
	}
	m.lineageStreams = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwatch_aggregator_lineage_streams",
		Help: "Agent streams receiving lineage watch updates.",
	}, func() float64 { return float64(f.size()) })
	m.watchUpdates = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwatch_aggregator_lineage_watch_updates_total",
		Help: "Lineage watch updates (WatchUpdate messages) sent to agents.",
	})
	m.lineageDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwatch_aggregator_lineage_streams_dropped_total",
		Help: "Lineage streams ended because their agent fell too far behind the watch updates (it reconnects and receives the watch set again).",
	})
	m.buffered = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwatch_aggregator_buffered_bytes",
		Help: "Bytes of received agent data held by all streams (messages being read, batches waiting for their commit), estimated.",
	}, func() float64 { return float64(b.heldBytes()) })
	m.budgetWaits = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tokenwatch_aggregator_buffer_waits_total",
		Help: "Times a stream waited for the fleet-wide memory budget before reading on (backpressure on its agent).",
	}, func() float64 { return float64(b.waits.Load()) })
	for _, r := range []string{"no_hello", "no_node", "no_cluster", "no_identity", "cluster_mismatch", "bad_seq", "second_hello",
		"bad_node", "node_in_use", "too_many_nodes"} {
		m.refused.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.batches, m.events, m.heartbeats, m.batchErrors, m.refused, m.buffered, m.budgetWaits,
			m.lineageStreams, m.watchUpdates, m.lineageDropped)
	}
	return m
}

// connectedNodes exports, per cluster, the nodes whose agent has a live
// stream (replays excluded): a fleet's clusters and nodes at a glance. A
// cluster appears once one of its agents connects and leaves with its last
// one, so the label's values are the clusters the certificates allow.
type connectedNodes struct{ n *nodes }

var connectedNodesDesc = prometheus.NewDesc("tokenwatch_aggregator_connected_nodes",
	"Nodes of a cluster whose agent has a live stream (replays excluded), by cluster.", []string{"cluster"}, nil)

func (c connectedNodes) Describe(ch chan<- *prometheus.Desc) { ch <- connectedNodesDesc }
func (c connectedNodes) Collect(ch chan<- prometheus.Metric) {
	per := map[string]int{}
	c.n.mu.Lock()
	for src := range c.n.live {
		per[src.Cluster]++
	}
	c.n.mu.Unlock()
	for cluster, n := range per {
		ch <- prometheus.MustNewConstMetric(connectedNodesDesc, prometheus.GaugeValue, float64(n), cluster)
	}
}
