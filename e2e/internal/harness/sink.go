package harness

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
)

// Record is one received OTLP log record, flattened for assertions.
type Record struct {
	EventName      string
	SeverityText   string
	SeverityNumber int
	Time           time.Time
	Body           string
	Attrs          map[string]any // pcommon values as Go values (AsRaw)
	Resource       map[string]any
}

// Str returns a string attribute ("" when absent or not a string).
func (r Record) Str(key string) string {
	s, _ := r.Attrs[key].(string)
	return s
}

// Sink is an OTLP/gRPC logs endpoint on loopback: the Collector's otlpreceiver
// feeding a recording consumer. It can be stopped and started again on the
// same address to play a collector outage; records survive restarts.
type Sink struct {
	Endpoint string // 127.0.0.1:port

	mu      sync.Mutex
	records []Record
	raw     []plog.Logs
	changed chan struct{} // closed and replaced on every consume
	rcv     receiver.Logs
}

// StartSink starts a sink on a free loopback port; it is stopped at the end
// of the test.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	s := &Sink{Endpoint: Addr(FreePort(t)), changed: make(chan struct{})}
	if err := s.Start(); err != nil {
		t.Fatalf("start OTLP sink: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop OTLP sink: %v", err)
		}
	})
	return s
}

// Start (re)starts the receiver on s.Endpoint.
func (s *Sink) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rcv != nil {
		return nil
	}
	factory := otlpreceiver.NewFactory()
	cfg := factory.CreateDefaultConfig().(*otlpreceiver.Config)
	grpcCfg := cfg.Protocols.GRPC.GetOrInsertDefault()
	grpcCfg.NetAddr.Endpoint = s.Endpoint
	next, err := consumer.NewLogs(s.consume)
	if err != nil {
		return fmt.Errorf("new consumer: %w", err)
	}
	set := receivertest.NewNopSettings(factory.Type())
	set.ID = component.NewIDWithName(factory.Type(), fmt.Sprintf("e2e-%p", cfg))
	rcv, err := factory.CreateLogs(context.Background(), set, cfg, next)
	if err != nil {
		return fmt.Errorf("create otlp receiver: %w", err)
	}
	if err := rcv.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		return fmt.Errorf("start otlp receiver on %s: %w", s.Endpoint, err)
	}
	s.rcv = rcv
	return nil
}

// Stop shuts the receiver down: the endpoint refuses connections until Start.
func (s *Sink) Stop() error {
	s.mu.Lock()
	rcv := s.rcv
	s.rcv = nil
	s.mu.Unlock()
	if rcv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rcv.Shutdown(ctx)
}

func (s *Sink) consume(_ context.Context, ld plog.Logs) error {
	var got []Record
	rls := ld.ResourceLogs()
	for i := 0; i < rls.Len(); i++ {
		rl := rls.At(i)
		res := rl.Resource().Attributes().AsRaw()
		sls := rl.ScopeLogs()
		for j := 0; j < sls.Len(); j++ {
			lrs := sls.At(j).LogRecords()
			for k := 0; k < lrs.Len(); k++ {
				lr := lrs.At(k)
				got = append(got, Record{
					EventName:      lr.EventName(),
					SeverityText:   lr.SeverityText(),
					SeverityNumber: int(lr.SeverityNumber()),
					Time:           lr.Timestamp().AsTime(),
					Body:           lr.Body().AsString(),
					Attrs:          lr.Attributes().AsRaw(),
					Resource:       res,
				})
			}
		}
	}
	cp := plog.NewLogs()
	ld.CopyTo(cp)
	s.mu.Lock()
	s.records = append(s.records, got...)
	s.raw = append(s.raw, cp)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// Records returns a copy of every record received so far.
func (s *Sink) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.records...)
}

// Raw returns every received payload, for searching the whole wire format.
func (s *Sink) Raw() []plog.Logs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]plog.Logs(nil), s.raw...)
}

// WaitFor waits until cond holds for the records received so far, or timeout
// passes. It wakes on every received payload (no polling).
func (s *Sink) WaitFor(timeout time.Duration, cond func([]Record) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		recs := append([]Record(nil), s.records...)
		ch := s.changed
		s.mu.Unlock()
		if cond(recs) {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// WaitProgress waits until cond holds, or no record has arrived for stall,
// or max has passed; it reports whether cond held. Use it where a slow
// pipeline is fine but a stalled one should fail fast.
func (s *Sink) WaitProgress(stall, max time.Duration, cond func([]Record) bool) bool {
	end := time.Now().Add(max)
	for {
		s.mu.Lock()
		recs := append([]Record(nil), s.records...)
		ch := s.changed
		s.mu.Unlock()
		if cond(recs) {
			return true
		}
		left := time.Until(end)
		if left <= 0 {
			return false
		}
		select {
		case <-ch:
		case <-time.After(min(stall, left)):
			s.mu.Lock()
			moved := s.changed != ch
			s.mu.Unlock()
			if !moved {
				return cond(s.Records())
			}
		}
	}
}

// Quiet waits until no record has arrived for d, or until max passes. Use it
// after the expected set is complete to catch late duplicates.
func (s *Sink) Quiet(d, max time.Duration) {
	end := time.Now().Add(max)
	for time.Now().Before(end) {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(d):
			return
		}
	}
}

// ByKind returns the tokenwatch.pipeline records of the given
// tokenwatch.pipeline.kind.
func ByKind(recs []Record, kind string) []Record {
	var out []Record
	for _, r := range ByEvent(recs, EventPipeline) {
		if r.Str("tokenwatch.pipeline.kind") == kind {
			out = append(out, r)
		}
	}
	return out
}

// ByEvent returns the records with the given EventName.
func ByEvent(recs []Record, name string) []Record {
	var out []Record
	for _, r := range recs {
		if r.EventName == name {
			out = append(out, r)
		}
	}
	return out
}
