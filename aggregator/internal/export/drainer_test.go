package export

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
)

func openStore(t *testing.T, dir string) *state.Store {
	t.Helper()
	s, err := state.OpenDir(dir, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// commitN commits n token-request records with IDs prefix-0 ... and
// returns the IDs.
func commitN(t *testing.T, s *state.Store, prefix string, n int) []string {
	t.Helper()
	var ids []string
	var recs []alert.Record
	for i := range n {
		r := sampleRecords()[0]
		r.ID = fmt.Sprintf("%s-%04d", prefix, i)
		r.Body = r.ID
		ids = append(ids, r.ID)
		recs = append(recs, r)
	}
	if added, err := s.Commit(state.Change{Records: recs}); err != nil || added != n {
		t.Fatalf("Commit = %d, %v, want %d", added, err, n)
	}
	return ids
}

// bodies are the sink's record bodies (the tests put the ID there).
func bodies(recs []*logspb.LogRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Body.GetStringValue()
	}
	return out
}

type running struct {
	d    *Drainer
	errc chan error
}

func startDrainer(t *testing.T, src Source, exp Exporter, cfg DrainerConfig, hook func(int, error)) *running {
	t.Helper()
	d, err := NewDrainer(src, exp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.onExport = hook
	r := &running{d: d, errc: make(chan error, 1)}
	go func() { r.errc <- d.Run(context.Background()) }()
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	if err := r.d.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-r.errc; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		// The sum over the metric's label values.
		sum := 0.0
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestDrainerDeliversInBatches: the drainer wakes on commits, exports in
// batches of at most BatchSize and empties the outbox.
func TestDrainerDeliversInBatches(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	sk, endpoint, _ := startSink(t, "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	r := startDrainer(t, st, newTestOTLP(t, endpoint), DrainerConfig{BatchSize: 100, Registerer: reg}, nil)

	want := commitN(t, st, "a", 3)
	sk.waitRecords(t, 3) // woken by the commit, not by a timer
	want = append(want, commitN(t, st, "b", 250)...)
	want = append(want, commitN(t, st, "c", 50)...)
	got := sk.waitRecords(t, len(want))
	r.stop(t)

	if diff := cmp.Diff(want, bodies(got)); diff != "" {
		t.Errorf("delivered records, in outbox order (-want +got):\n%s", diff)
	}
	for i, req := range sk.requests() {
		if n := len(req.ResourceLogs[0].ScopeLogs[0].LogRecords); n > 100 {
			t.Errorf("request %d carried %d records, want at most BatchSize 100", i, n)
		}
	}
	if d := st.Depth(); d != 0 {
		t.Errorf("outbox depth after delivery = %d, want 0", d)
	}
	if v := metric(t, reg, "tokenwatch_aggregator_exported_records_total"); v != float64(len(want)) {
		t.Errorf("exported_records_total = %v, want %d", v, len(want))
	}
	if v := metric(t, reg, "tokenwatch_aggregator_outbox_depth"); v != 0 {
		t.Errorf("outbox_depth = %v, want 0", v)
	}
	if v := metric(t, reg, "tokenwatch_aggregator_export_failures_total"); v != 0 {
		t.Errorf("export_failures_total = %v, want 0", v)
	}
}

// TestDrainerCollectorDownThenUp: with the collector down, exports fail and
// are retried; records committed meanwhile wait; once the collector is up
// every record arrives exactly once. An aggregator restart during the
// outage loses nothing either.
func TestDrainerCollectorDownThenUp(t *testing.T) {
	// Reserve a port, then leave it closed: the collector is down.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()

	dir := t.TempDir()
	st := openStore(t, dir)
	failed := make(chan struct{}, 1)
	hook := func(_ int, err error) {
		if err != nil {
			select {
			case failed <- struct{}{}:
			default:
			}
		}
	}
	cfg := DrainerConfig{MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	exp := newTestOTLP(t, addr)
	r := startDrainer(t, st, exp, cfg, hook)
	want := commitN(t, st, "before", 5)
	<-failed
	want = append(want, commitN(t, st, "during", 5)...)
	<-failed // retried, still failing
	if v := metric(t, reg, "tokenwatch_aggregator_export_failures_total"); v < 2 {
		t.Errorf("export_failures_total = %v, want >= 2", v)
	}
	if v := metric(t, reg, "tokenwatch_aggregator_outbox_depth"); v != 10 {
		t.Errorf("outbox_depth during outage = %v, want 10", v)
	}

	// Restart the aggregator's side while the collector is still down.
	r.stop(t)
	exp.Shutdown(context.Background())
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	if d := st.Depth(); d != 10 {
		t.Fatalf("outbox depth after restart = %d, want 10", d)
	}
	cfg.Registerer = nil
	r = startDrainer(t, st, newTestOTLP(t, addr), cfg, hook)
	<-failed
	want = append(want, commitN(t, st, "after-restart", 5)...)

	// The collector comes up.
	sk, _, _ := startSink(t, addr)
	got := sk.waitRecords(t, len(want))
	r.stop(t)
	if diff := cmp.Diff(want, bodies(got)); diff != "" {
		t.Errorf("delivered after the outage (-want +got):\n%s", diff)
	}
	if d := st.Depth(); d != 0 {
		t.Errorf("outbox depth = %d, want 0", d)
	}
}

func TestDrainerPartialSuccessIsNotRetried(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	sk, endpoint, _ := startSink(t, "127.0.0.1:0")
	sk.partial = 1
	reg := prometheus.NewRegistry()
	report := func(r alert.Record) error {
		_, err := st.Commit(state.Change{Records: []alert.Record{r}})
		return err
	}
	r := startDrainer(t, st, newTestOTLP(t, endpoint), DrainerConfig{Registerer: reg, Report: report}, nil)
	commitN(t, st, "p", 3)
	// The three, then the export_rejected record, which the collector
	// rejects too: that one is not reported again.
	got := sk.waitRecords(t, 4)
	r.stop(t)
	if n := len(sk.records()); n != 4 {
		t.Errorf("sink got %d records, want 4 (no resend after a partial success, one report)", n)
	}
	if d := st.Depth(); d != 0 {
		t.Errorf("outbox depth = %d, want 0", d)
	}
	for name, want := range map[string]float64{
		"tokenwatch_aggregator_export_rejected_records_total": 2, // one of the three, the report
		"tokenwatch_aggregator_exported_records_total":        2, // the other two
	} {
		if v := metric(t, reg, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	rep := got[3]
	if rep.EventName != alert.EventPipeline || attr(rep, "tokenwatch.pipeline.kind").GetStringValue() != "export_rejected" ||
		attr(rep, "tokenwatch.export.rejected").GetIntValue() != 1 || attr(rep, "tokenwatch.export.records").GetIntValue() != 3 ||
		attr(rep, "tokenwatch.export.error").GetStringValue() != "too old" || rep.SeverityText != "high" {
		t.Errorf("report record = %v, want an export_rejected pipeline record: 1 of 3 rejected, \"too old\", high", rep)
	}
}

// stuckExporter blocks every export until its context ends.
type stuckExporter struct{ entered chan struct{} }

func (s *stuckExporter) Export(ctx context.Context, _ []alert.Record) error {
	s.entered <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}
func (s *stuckExporter) Shutdown(context.Context) error { return nil }

func TestDrainerShutdownForcesStop(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	exp := &stuckExporter{entered: make(chan struct{}, 1)}
	r := startDrainer(t, st, exp, DrainerConfig{Timeout: time.Hour}, nil)
	commitN(t, st, "s", 2)
	<-exp.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no time left: force
	if err := r.d.Shutdown(ctx); err == nil {
		t.Error("Shutdown with an expired context while an export hangs = nil error")
	}
	if err := <-r.errc; err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := r.d.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if d := st.Depth(); d != 2 {
		t.Errorf("outbox depth = %d, want 2 (undelivered records stay)", d)
	}
}

func TestDrainerShutdownBeforeRun(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	d, err := NewDrainer(st, &stuckExporter{entered: make(chan struct{}, 1)}, DrainerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown before Run: %v", err)
	}
	if err := d.Run(context.Background()); err != nil {
		t.Errorf("Run after Shutdown: %v", err)
	}
}

func TestDrainerStopsOnContext(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	d, err := NewDrainer(st, NewJSON(new(discard)), DrainerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Errorf("Run with a cancelled context: %v", err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after Run returned: %v", err)
	}
}

type discard struct{}

func (*discard) Write(p []byte) (int, error) { return len(p), nil }

func TestDrainerRegistersOnce(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s"))
	defer st.Close()
	reg := prometheus.NewRegistry()
	if _, err := NewDrainer(st, NewJSON(new(discard)), DrainerConfig{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDrainer(st, NewJSON(new(discard)), DrainerConfig{Registerer: reg}); err == nil {
		t.Error("second NewDrainer on the same registry = nil error, want a registration conflict")
	}
}

func TestBackoff(t *testing.T) {
	d := &Drainer{cfg: DrainerConfig{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	tests := []struct {
		give     int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{5, 500 * time.Millisecond, time.Second},
		{50, 500 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			if got := d.backoff(tt.give); got < tt.min || got > tt.max {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", tt.give, got, tt.min, tt.max)
			}
		}
	}
}

func TestBatchSizeShrinksOnFailure(t *testing.T) {
	d := &Drainer{cfg: DrainerConfig{BatchSize: 512}}
	tests := []struct{ give, want int }{{0, 512}, {1, 256}, {3, 64}, {9, 1}, {10, 1}, {1000, 1}}
	for _, tt := range tests {
		if got := d.batchSize(tt.give); got != tt.want {
			t.Errorf("batchSize(%d) = %d, want %d", tt.give, got, tt.want)
		}
	}
}
