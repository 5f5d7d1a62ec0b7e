package export

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// Source is the durable outbox a Drainer empties; *state.Store is one.
type Source interface {
	// Outbox returns up to max records, oldest first.
	Outbox(max int) ([]alert.Record, error)
	// Exported removes delivered records from the outbox.
	Exported(ids []string) error
	// Depth is the number of records in the outbox.
	Depth() int
	// Added signals (coalesced) that records were added.
	Added() <-chan struct{}
}

// DrainerConfig tunes a Drainer. Zero fields take the defaults.
type DrainerConfig struct {
	// BatchSize is the most records per export (default 512).
	BatchSize int
	// MinBackoff and MaxBackoff bound the wait after a failed export
	// (defaults 250ms and 30s): it doubles per consecutive failure, capped,
	// with jitter (a uniform draw from its upper half).
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one export (default DefaultTimeout).
	Timeout time.Duration
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger reports export failures (nil: discarded).
	Logger *slog.Logger
	// Report adds a record to the outbox: the export_rejected pipeline
	// record of a partial success (nil: only logged and counted).
	Report func(alert.Record) error
}

func (c *DrainerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 250 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Drainer moves records from a Source to an Exporter: it wakes when records
// are added, exports them in batches, and removes them from the outbox only
// after the Exporter reported success. A failed export is retried with
// capped exponential backoff and jitter; nothing is ever dropped.
type Drainer struct {
	src Source
	exp Exporter
	cfg DrainerConfig

	mu      sync.Mutex
	started bool
	stopped bool
	stop    chan struct{}
	done    chan struct{}
	cancel  context.CancelFunc

	exported *prometheus.CounterVec
	duration prometheus.Histogram
	failures prometheus.Counter
	rejected prometheus.Counter

	// onExport, when set (tests), is called after every export attempt.
	onExport func(n int, err error)
}

// NewDrainer returns a Drainer from src to exp; it registers its metrics on
// cfg.Registerer.
func NewDrainer(src Source, exp Exporter, cfg DrainerConfig) (*Drainer, error) {
	cfg.setDefaults()
	d := &Drainer{
		src:  src,
		exp:  exp,
		cfg:  cfg,
		stop: make(chan struct{}),
		done: make(chan struct{}),
		exported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_exported_records_total",
			Help: "Alert records delivered to the exporter's endpoint and removed from the outbox, by event_name.",
		}, []string{"event_name"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tokenwatch_aggregator_export_duration_seconds",
			Help:    "Time one export attempt (a batch of records) took, failed attempts included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_export_failures_total",
			Help: "Failed export attempts (the records stay in the outbox and are retried).",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwatch_aggregator_export_rejected_records_total",
			Help: "Records the OTLP endpoint rejected in a partial success (not retried).",
		}),
	}
	if cfg.Registerer != nil {
		depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwatch_aggregator_outbox_depth",
			Help: "Alert records in the durable outbox waiting for export.",
		}, func() float64 { return float64(src.Depth()) })
		for _, name := range []string{alert.EventTokenRequest, alert.EventCorrelation, alert.EventPipeline} {
			d.exported.WithLabelValues(name)
		}
		for _, c := range []prometheus.Collector{depth, d.exported, d.duration, d.failures, d.rejected} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register export metrics: %w", err)
			}
		}
	}
	return d, nil
}

// errStore marks an outbox failure, which ends Run.
type errStore struct{ err error }

func (e *errStore) Error() string { return e.err.Error() }
func (e *errStore) Unwrap() error { return e.err }

// Run drains the outbox until ctx is cancelled or Shutdown is called, and
// returns nil then. It returns an error only when the outbox cannot be read
// or updated. Run may be called once.
func (d *Drainer) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.started || d.stopped {
		d.mu.Unlock()
		return nil
	}
	d.started = true
	ctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	d.mu.Unlock()
	defer close(d.done)
	defer cancel()

	failures := 0
	for {
		select {
		case <-d.stop:
			return d.finalDrain(ctx)
		case <-ctx.Done():
			return nil
		default:
		}
		recs, err := d.src.Outbox(d.batchSize(failures))
		if err != nil {
			return fmt.Errorf("drain outbox: %w", err)
		}
		if len(recs) == 0 {
			select {
			case <-d.src.Added():
			case <-d.stop:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		err = d.export(ctx, recs)
		var se *errStore
		switch {
		case errors.As(err, &se):
			return fmt.Errorf("drain outbox: %w", se.err)
		case err == nil:
			failures = 0
			continue
		case ctx.Err() != nil:
			return nil
		}
		failures++
		wait := d.backoff(failures)
		d.cfg.Logger.Warn("export failed; records stay in the outbox and are retried",
			"records", len(recs), "outbox_depth", d.src.Depth(), "attempt", failures, "retry_in", wait.String(), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-d.stop:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// finalDrain exports what it can before Run returns on Shutdown: until the
// outbox is empty or an export fails. What is left stays in the outbox.
func (d *Drainer) finalDrain(ctx context.Context) error {
	for {
		recs, err := d.src.Outbox(d.cfg.BatchSize)
		if err != nil {
			return fmt.Errorf("drain outbox: %w", err)
		}
		if len(recs) == 0 {
			return nil
		}
		if err := d.export(ctx, recs); err != nil {
			var se *errStore
			if errors.As(err, &se) {
				return fmt.Errorf("drain outbox: %w", se.err)
			}
			d.cfg.Logger.Warn("export failed at shutdown; records stay in the outbox for the next start",
				"outbox_depth", d.src.Depth(), "err", err)
			return nil
		}
	}
}

// export sends one batch and marks it exported.
func (d *Drainer) export(ctx context.Context, recs []alert.Record) error {
	ectx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	start := time.Now()
	err := d.exp.Export(ectx, recs)
	d.duration.Observe(time.Since(start).Seconds())
	cancel()
	var rej *RejectedError
	var report *alert.Record
	rejected := 0
	if errors.As(err, &rej) {
		rejected = int(min(max(rej.Rejected, 0), int64(len(recs))))
		d.cfg.Logger.Warn("otlp endpoint rejected records (partial success); not retried",
			"records", len(recs), "rejected", rejected, "err", err)
		report = rejectedRecord(recs, rejected, rej.Message, time.Now())
		err = nil
	}
	if err == nil {
		ids := make([]string, len(recs))
		for i := range recs {
			ids[i] = recs[i].ID
		}
		if serr := d.src.Exported(ids); serr != nil {
			err = &errStore{err: serr}
		} else {
			// The endpoint does not say which it rejected: the
			// accepted ones count under the names of the last.
			for i := rejected; i < len(recs); i++ {
				d.exported.WithLabelValues(recs[i].EventName).Inc()
			}
			d.rejected.Add(float64(rejected))
		}
		if err == nil && report != nil && d.cfg.Report != nil {
			if serr := d.cfg.Report(*report); serr != nil {
				err = &errStore{err: serr}
			}
		}
	} else {
		d.failures.Inc()
	}
	if d.onExport != nil {
		d.onExport(len(recs), err)
	}
	return err
}

// KindExportRejected is the tokenwatch.pipeline.kind of the record that
// reports a partial success.
const KindExportRejected = "export_rejected"

// maxErrorMessage bounds the collector's message kept in the record.
const maxErrorMessage = 1024

// rejectedRecord is the export_rejected pipeline record of a partial
// success that rejected n of recs, or nil when recs are all such records
// themselves: a collector that rejects the reports is not sent a report of
// each (that is logged and counted only). Its ID is the batch's, so a
// batch exported again after a restart does not report twice.
func rejectedRecord(recs []alert.Record, n int, msg string, now time.Time) *alert.Record {
	h := sha256.New()
	reports := 0
	for i := range recs {
		if isRejectedReport(&recs[i]) {
			reports++
		}
		h.Write([]byte(recs[i].ID))
		h.Write([]byte{0})
	}
	if reports == len(recs) || n <= 0 {
		return nil
	}
	if len(msg) > maxErrorMessage {
		msg = strings.ToValidUTF8(msg[:maxErrorMessage], "") + "...(truncated)"
	}
	return &alert.Record{
		ID:        "pl-rejected-" + hex.EncodeToString(h.Sum(nil)[:16]),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.High,
		Body: fmt.Sprintf("The OTLP endpoint rejected %d of %d alert records in a partial success (not retried): %s",
			n, len(recs), msg),
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", KindExportRejected),
			alert.Int("tokenwatch.export.rejected", int64(n)),
			alert.Int("tokenwatch.export.records", int64(len(recs))),
			alert.String("tokenwatch.export.error", msg),
		},
	}
}

func isRejectedReport(r *alert.Record) bool {
	if r.EventName != alert.EventPipeline {
		return false
	}
	v, ok := r.Attr("tokenwatch.pipeline.kind")
	return ok && v.Str == KindExportRejected
}

// batchSize halves the batch per consecutive failure (down to one record),
// so that a request the endpoint refuses for its size gets through, and a
// record that always fails is isolated and logged. One success restores it.
func (d *Drainer) batchSize(failures int) int {
	return max(1, d.cfg.BatchSize>>min(failures, 30))
}

// backoff is the wait after the n-th consecutive failure: MinBackoff
// doubled n-1 times, capped at MaxBackoff, then a uniform draw from its
// upper half.
func (d *Drainer) backoff(n int) time.Duration {
	b := d.cfg.MinBackoff
	for i := 1; i < n && b < d.cfg.MaxBackoff; i++ {
		b *= 2
	}
	b = min(b, d.cfg.MaxBackoff)
	half := b / 2
	return half + rand.N(b-half+1)
}

// Shutdown stops Run: it exports what it can without waiting for backoff,
// then returns. When ctx ends first, the export in flight is cancelled and
// Shutdown returns ctx's error; undelivered records stay in the outbox.
// Shutdown is safe to call twice and before Run.
func (d *Drainer) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	if !d.stopped {
		d.stopped = true
		close(d.stop)
	}
	started, cancel := d.started, d.cancel
	d.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		cancel()
		<-d.done
		return fmt.Errorf("shut down export drainer: %w", ctx.Err())
	}
}
