// Package metrics exposes the agent's counters in the Prometheus text format
// and its health on HTTP: /metrics, /healthz and /readyz.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/agent/internal/uses"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

// Sources are read at every scrape.
type Sources struct {
	Follow func() follow.Stats
	Send   func() sender.Stats
	// Lineage, when set, gives the tokenwatch_agent_lineage_* figures.
	Lineage func() uses.Stats
	// AuditLogJSON reports whether the live audit log's newest line is a
	// JSON audit event (true when unknown); nil: not looked at (--once).
	AuditLogJSON func() bool
	// AuditLogRotation gives the size, in bytes, at which kube-apiserver
	// rotates the audit log, as inferred (0: unknown); nil: not looked at.
	AuditLogRotation func() int64
	// AuditPolicy gives the state of the watched audit policy file, one of
	// the Policy* states; nil when none is watched.
	AuditPolicy func() string
	// Certificates maps a certificate label ("client", "ca") to its PEM
	// file, read at each scrape for
	// tokenwatch_agent_certificate_expiry_timestamp_seconds.
	Certificates map[string]string
}

// States of tokenwatch_agent_audit_policy_state.
const (
	PolicyUnwatched = "unwatched"            // no --audit-policy-file
	PolicyLogged    = "logged"               // every token request is logged at a stage tokenwatch reads
	PolicyHides     = "hides_token_requests" // some are kept out of the audit log
	PolicyUnread    = "unreadable"           // the file cannot be read
)

// Agent holds the agent's metrics.
type Agent struct {
	Registry *prometheus.Registry

	Candidates prometheus.Counter     // lines that passed the byte pre-filter
	Decoded    prometheus.Counter     // candidates decoded as JSON
	Malformed  prometheus.Counter     // decoded candidates that were not valid events
	Matches    prometheus.Counter     // token creates found
	Losses     *prometheus.CounterVec // loss reports, by reason
	Marked     *prometheus.CounterVec // token creates sent with fields cut or absent, by mark
	Saves      prometheus.Counter     // checkpoints written
	SaveErrors prometheus.Counter     // checkpoint writes that failed
}

// New registers the agent's metrics on a fresh registry.
func New(src Sources) *Agent {
	reg := prometheus.NewRegistry()
	reg.MustRegister(version.NewCollector("agent"))
	a := &Agent{Registry: reg}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "tokenwatch_agent", Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	a.Candidates = counter("candidate_lines_total", "Lines that passed the byte pre-filter.")
	a.Decoded = counter("decoded_lines_total", "Candidate lines decoded as JSON.")
	a.Malformed = counter("malformed_lines_total", "Decoded candidate lines that were not valid audit events.")
	a.Matches = counter("token_creates_total", "Token-create events found.")
	a.Saves = counter("checkpoint_saves_total", "Checkpoints written.")
	a.SaveErrors = counter("checkpoint_save_errors_total", "Checkpoint writes that failed.")
	a.Losses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tokenwatch_agent", Name: "losses_total", Help: "Audit data the agent could not deliver, by reason.",
	}, []string{"reason"})
	reg.MustRegister(a.Losses)
	a.Marked = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tokenwatch_agent", Name: "events_marked_total",
		Help: "Token-create events sent with fields cut to their bounds (mark=truncated) or left absent for a wrong JSON type (mark=malformed_fields).",
	}, []string{"mark"})
	reg.MustRegister(a.Marked)

	registerAuditLog(reg, src)
	if s := src.Send; s != nil {
		registerFunc(reg, prometheus.CounterValue, "events_sent_total", "Token events sent, re-sends included.", func() float64 { return float64(s().EventsSent) })
		registerFunc(reg, prometheus.CounterValue, "events_acked_total", "Token events acknowledged by the aggregator.", func() float64 { return float64(s().EventsAcked) })
		registerFunc(reg, prometheus.CounterValue, "reconnects_total", "Streams opened after the first.", func() float64 { return float64(s().Reconnects) })
		registerFunc(reg, prometheus.GaugeValue, "unacked_events", "Token events sent or queued and not acknowledged.", func() float64 { return float64(s().UnackedEvents) })
		registerFunc(reg, prometheus.GaugeValue, "connected", "1 while a stream to the aggregator is open and welcomed.", func() float64 {
			if s().Connected {
				return 1
			}
			return 0
		})
	}
	if l := src.Lineage; l != nil {
		registerLineage(reg, l, src.Send)
	}
	if len(src.Certificates) > 0 {
		reg.MustRegister(certExpiry{desc: prometheus.NewDesc("tokenwatch_agent_certificate_expiry_timestamp_seconds",
			"When a certificate the agent holds expires (the earliest NotAfter in its file), Unix seconds.",
			[]string{"certificate"}, nil), files: src.Certificates})
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return a
}

// registerAuditLog registers what the agent says of its audit log and of
// the audit policy file.
func registerAuditLog(reg *prometheus.Registry, src Sources) {
	if f := src.Follow; f != nil {
		registerFunc(reg, prometheus.CounterValue, "lines_read_total", "Audit log lines read.", func() float64 { return float64(f().Lines) })
		registerFunc(reg, prometheus.CounterValue, "read_bytes_total", "Audit log bytes read.", func() float64 { return float64(f().Bytes) })
		registerFunc(reg, prometheus.CounterValue, "rotations_total", "Times the live audit log was rotated away or truncated.", func() float64 { return float64(f().Rotations) })
		registerFunc(reg, prometheus.CounterValue, "lines_too_long_total", "Lines longer than the limit, skipped and reported.", func() float64 { return float64(f().LinesTooLong) })
		registerFunc(reg, prometheus.GaugeValue, "behind_bytes", "Audit data not read yet: the rest of the file and newer rotated files.", func() float64 { return float64(f().Behind) })
		reg.MustRegister(stateSet{
			desc: prometheus.NewDesc("tokenwatch_agent_audit_log_state",
				"1 for the state of the live audit log (--audit-log): present, absent or unreadable; the agent is ready only while it is present.",
				[]string{"state"}, nil),
			states: []string{string(follow.LivePresent), string(follow.LiveAbsent), string(follow.LiveUnreadable)},
			cur:    func() string { return string(f().Live) },
		})
		registerFunc(reg, prometheus.GaugeValue, "last_growth_timestamp_seconds", "When audit data was last read.", func() float64 {
			if t := f().LastGrowth; !t.IsZero() {
				return float64(t.UnixNano()) / 1e9
			}
			return 0
		})
	}
	reg.MustRegister(policyState(src.AuditPolicy))
	if j := src.AuditLogJSON; j != nil {
		registerFunc(reg, prometheus.GaugeValue, "audit_log_json", "1 while the live audit log's newest complete line is a JSON audit event (or none is seen), 0 when it is not (--audit-log-format=legacy).", func() float64 {
			if j() {
				return 1
			}
			return 0
		})
	}
	if r := src.AuditLogRotation; r != nil {
		registerFunc(reg, prometheus.GaugeValue, "audit_log_rotation_bytes", "The largest size at which kube-apiserver may have made its newest audit log rotation (--audit-log-maxsize, inferred from the rotated file); 0 when unknown. An event longer than it never reaches the file.", func() float64 {
			return float64(r())
		})
	}
}

// policyState is tokenwatch_agent_audit_policy_state, read from cur (nil:
// unwatched).
func policyState(cur func() string) prometheus.Collector {
	if cur == nil {
		cur = func() string { return PolicyUnwatched }
	}
	return stateSet{
		desc: prometheus.NewDesc("tokenwatch_agent_audit_policy_state",
			"1 for the state of the kube-apiserver audit policy file (--audit-policy-file): unwatched, logged (every token request logged at a stage tokenwatch reads), hides_token_requests, or unreadable.",
			[]string{"state"}, nil),
		states: []string{PolicyUnwatched, PolicyLogged, PolicyHides, PolicyUnread},
		cur:    cur,
	}
}

// registerFunc registers tokenwatch_agent_<name>, read from v at each
// scrape.
func registerFunc(reg *prometheus.Registry, kind prometheus.ValueType, name, help string, v func() float64) {
	reg.MustRegister(funcCollector{desc: prometheus.NewDesc("tokenwatch_agent_"+name, help, nil, nil), kind: kind, v: v})
}

// funcCollector reads one value at scrape time.
type funcCollector struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	v    func() float64
}

func (c funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c funcCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, c.kind, c.v())
}

// certExpiry reads its files at each scrape (as each TLS handshake re-reads
// them); a file that cannot be read has no sample.
type certExpiry struct {
	desc  *prometheus.Desc
	files map[string]string
}

func (c certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c certExpiry) Collect(ch chan<- prometheus.Metric) {
	for label, path := range c.files {
		if t, err := tlsconf.NotAfter(path); err == nil {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(t.UnixNano())/1e9, label)
		}
	}
}

// stateSet is a gauge with one series per state: 1 for the current one.
type stateSet struct {
	desc   *prometheus.Desc
	states []string
	cur    func() string
}

func (c stateSet) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c stateSet) Collect(ch chan<- prometheus.Metric) {
	cur := c.cur()
	for _, s := range c.states {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, s)
	}
}

// Handler serves /metrics, /healthz (always 200 while the process serves)
// and /readyz (200 when ready returns nil, else 503 with its error).
func (a *Agent) Handler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		err := errors.New("not ready")
		if ready != nil {
			err = ready()
		}
		if err == nil {
			fmt.Fprintln(w, "ready")
			return
		}
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	})
	return mux
}

// Serve listens on addr and serves h until ctx ends, then shuts down
// within a second.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	return ServeListener(ctx, lis, h)
}

// ServeListener is Serve on an open listener.
func ServeListener(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("stop metrics server: %w", err)
	}
	return nil
}

// registerLineage registers the tokenwatch_agent_lineage_* metrics.
func registerLineage(reg *prometheus.Registry, l func() uses.Stats, send func() sender.Stats) {
	fn := func(kind prometheus.ValueType, name, help string, v func(uses.Stats) uint64) {
		desc := prometheus.NewDesc("tokenwatch_agent_lineage_"+name, help, nil, nil)
		reg.MustRegister(funcCollector{desc: desc, kind: kind, v: func() float64 { return float64(v(l())) }})
	}
	reg.MustRegister(lineageWatches{desc: prometheus.NewDesc("tokenwatch_agent_lineage_watches",
		"Lineage watches held, by kind (token, actor_user, actor_credential).", []string{"kind"}, nil), stats: l})
	if send != nil {
		desc := prometheus.NewDesc("tokenwatch_agent_lineage_uses_sent_total", "Lineage uses sent one by one, re-sends included.", nil, nil)
		reg.MustRegister(funcCollector{desc: desc, kind: prometheus.CounterValue, v: func() float64 { return float64(send().UsesSent) }})
	}
	fn(prometheus.CounterValue, "uses_queued_total", "Lineage uses queued to be sent one by one (first use per token and reason key, minters' sensitive actions), lookback ones included.",
		func(s uses.Stats) uint64 { return s.UsesSent })
	fn(prometheus.CounterValue, "uses_counted_total", "Lineage requests only counted: further uses of watched tokens, legacy-token requests.",
		func(s uses.Stats) uint64 { return s.UsesCounted })
	fn(prometheus.GaugeValue, "lookback_entries", "Blocks of log held in the lookback index.", func(s uses.Stats) uint64 { return uint64(s.LookbackEntries) })
	fn(prometheus.GaugeValue, "lookback_pinned_entries", "Lookback blocks pinned until a token create's batch is acknowledged.",
		func(s uses.Stats) uint64 { return uint64(s.LookbackPinned) })
	fn(prometheus.GaugeValue, "lookback_bytes", "Bytes of log the lookback index covers.", func(s uses.Stats) uint64 { return s.LookbackBytes })
	fn(prometheus.CounterValue, "lookback_rescanned_bytes_total", "Bytes of log read again for new watches.",
		func(s uses.Stats) uint64 { return s.LookbackRescanned })
	fn(prometheus.CounterValue, "lookback_hits_total", "Lines read again for a new watch that matched it.", func(s uses.Stats) uint64 { return s.LookbackHits })
	fn(prometheus.CounterValue, "lookback_misses_total", "Lookback blocks a new watch may match that could not be read again (reported as lost).",
		func(s uses.Stats) uint64 { return s.LookbackMisses })
	fn(prometheus.CounterValue, "lookback_dropped_total", "Lookback blocks dropped before the window ended because the index was full.",
		func(s uses.Stats) uint64 { return s.LookbackDropped })
	fn(prometheus.CounterValue, "pin_waits_total", "Times reading waited for acknowledgements because pinned blocks filled the lookback index.",
		func(s uses.Stats) uint64 { return s.PinWaits })
	fn(prometheus.GaugeValue, "open_files", "Audit files held open to read lookback blocks again.", func(s uses.Stats) uint64 { return uint64(s.OpenFiles) })
}

// lineageWatches is the watches gauge, one series per kind.
type lineageWatches struct {
	desc  *prometheus.Desc
	stats func() uses.Stats
}

func (c lineageWatches) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c lineageWatches) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.TokenWatches), "token")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.ActorUserWatches), "actor_user")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.ActorCredentialWatches), "actor_credential")
}
