package pipeline

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/correlate"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/silence"
)

type eventCounters struct {
	excluded, notMatched, held, alerted, droppedLate, ignored, suppressed prometheus.Counter
}

type metrics struct {
	events        eventCounters
	recordsAdded  prometheus.Counter
	losses        prometheus.Counter
	expired       prometheus.Counter
	pendingBroken prometheus.Counter
	tickErrors    prometheus.Counter
	lineage       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, corr func() correlate.Stats, silent func() map[silence.SilentKey]int) *metrics {
	ev := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwatch_aggregator_events_total",
		Help: "Token-create events processed, by result: excluded, not_matched, held (pending its completion), alerted, dropped_late (completion after the grace), ignored (duplicate), suppressed (held back by the budget).",
	}, []string{"result"})
	m := &metrics{
		events: eventCounters{
			excluded:    ev.WithLabelValues("excluded"),
			notMatched:  ev.WithLabelValues("not_matched"),
			held:        ev.WithLabelValues("held"),
			alerted:     ev.WithLabelValues("alerted"),
			droppedLate: ev.WithLabelValues("dropped_late"),
			ignored:     ev.WithLabelValues("ignored"),
			suppressed:  ev.WithLabelValues("suppressed"),
		},
		recordsAdded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_records_added_total",
			Help: "Alert records newly added to the outbox.",
		}),
		losses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_loss_reports_total",
			Help: "Loss reports received from agents.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_pending_expired_total",
			Help: "RequestReceived events alerted alone (event.outcome=unknown) after stage_grace.",
		}),
		pendingBroken: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_pending_unreadable_total",
			Help: "Stored pending events that could not be decoded and were dropped.",
		}),
		tickErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_tick_errors_total",
			Help: "Failed rounds of the periodic work (due pendings, budget, silence).",
		}),
	}
	m.lineage = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwatch_aggregator_lineage_records_total",
		Help: "Token lineage records committed to the outbox (a re-sent batch's included, which the outbox keeps once), by event_name.",
	}, []string{"event_name"})
	for _, n := range []string{lineage.EventTokenUse, lineage.EventTokenUseSummary, lineage.EventActorFollowup,
		lineage.EventLegacyTokenUse, alert.EventPipeline} {
		m.lineage.WithLabelValues(n)
	}
	if reg != nil {
		reg.MustRegister(m.lineage, silences{silent})
		reg.MustRegister(ev, m.recordsAdded, m.losses, m.expired, m.pendingBroken, m.tickErrors,
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tokenwatch_aggregator_correlation_late_events_total",
				Help: "Alerting events not correlated: more than correlation.lateness behind the newest event of their cluster.",
			}, func() float64 { return float64(corr().Late) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tokenwatch_aggregator_correlation_evicted_events_total",
				Help: "Events dropped from a full correlation series (the oldest go first).",
			}, func() float64 { return float64(corr().Evicted) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tokenwatch_aggregator_correlation_clamped_events_total",
				Help: "Alerting events whose time was more than a minute ahead of the aggregator's clock, correlated at that bound.",
			}, func() float64 { return float64(corr().Clamped) }))
	}
	return m
}

// silences is tokenwatch_aggregator_silences, read from silent.
type silences struct {
	silent func() map[silence.SilentKey]int
}

var silencesDesc = prometheus.NewDesc("tokenwatch_aggregator_silences",
	"What is silent now, by cluster and tokenwatch.silence.reason: the nodes silent for a node's reason, 1 for a whole cluster's (no_token_requests, nodes_missing); each has had its cluster_silent record and no cluster_resumed since.",
	[]string{"cluster", "reason"}, nil)

func (s silences) Describe(ch chan<- *prometheus.Desc) { ch <- silencesDesc }
func (s silences) Collect(ch chan<- prometheus.Metric) {
	for k, n := range s.silent() {
		ch <- prometheus.MustNewConstMetric(silencesDesc, prometheus.GaugeValue, float64(n), k.Cluster, k.Reason)
	}
}

func (m *metrics) count(r *Result) {
	add := func(c prometheus.Counter, n int) {
		if n > 0 {
			c.Add(float64(n))
		}
	}
	add(m.events.excluded, r.Excluded)
	add(m.events.notMatched, r.NotMatched)
	add(m.events.held, r.Held)
	add(m.events.alerted, r.Alerted)
	add(m.events.droppedLate, r.DroppedLate)
	add(m.events.ignored, r.Ignored)
	add(m.events.suppressed, r.Suppressed)
	add(m.recordsAdded, r.Records)
}

// lineageRecords counts committed lineage records by event name.
func (m *metrics) lineageRecords(names []string) {
	for _, n := range names {
		m.lineage.WithLabelValues(n).Inc()
	}
}
