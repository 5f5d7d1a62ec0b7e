package ingest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// ackStream is the server side of a stream that records what is sent.
type ackStream struct {
	grpc.ServerStream
	sent []*tokenwatchv1.StreamResponse
}

func (a *ackStream) Send(r *tokenwatchv1.StreamResponse) error {
	a.sent = append(a.sent, r)
	return nil
}

func (a *ackStream) Recv() (*tokenwatchv1.StreamRequest, error) { panic("not used") }

func (a *ackStream) Context() context.Context { return context.Background() }

// releaseChecker is a Processor that notes whether the protobuf batch still
// held its events while the batch was processed.
type releaseChecker struct {
	proto *tokenwatchv1.Batch
	held  int
	got   int
}

func (r *releaseChecker) Process(_ context.Context, b pipeline.Batch) (pipeline.Result, error) {
	r.held, r.got = len(r.proto.GetEvents()), len(b.Events)
	return pipeline.Result{}, nil
}

func (r *releaseChecker) Heard(string, string, time.Time) {}

// TestBatchReleasesProtoBeforeProcess checks that a batch waiting in
// Process (for its agent's lock and the commit) no longer holds its
// protobuf form besides the converted events: with a thousand agents those
// copies were a third of the aggregator's heap. The events are still
// counted and the batch acknowledged.
func TestBatchReleasesProtoBeforeProcess(t *testing.T) {
	reg := prometheus.NewRegistry()
	pc := &releaseChecker{}
	s := New(Options{Processor: pc, Insecure: true, Registerer: reg})
	b := batchMsg(7, "a1", "a2", "a3").GetBatch()
	pc.proto = b
	st := &ackStream{}
	if err := s.batch(context.Background(), st, detect.Source{Cluster: "prod", Node: "cp-1"}, b, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if pc.got != 3 || pc.held != 0 {
		t.Errorf("Process got %d events while the protobuf batch still held %d, want 3 and 0", pc.got, pc.held)
	}
	if len(st.sent) != 1 || st.sent[0].GetAck().GetSeq() != 7 {
		t.Errorf("sent %v, want one ack of 7", st.sent)
	}
	var m dto.Metric
	if err := s.m.events.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 3 {
		t.Errorf("events received = %v, want 3", got)
	}
}

// screener is a releaseChecker that drops events by audit ID.
type screener struct {
	releaseChecker
	verdict map[string]rule.Verdict // by user, which the test names after the audit ID
	batch   pipeline.Batch
}

func (s *screener) Screen(sub *rule.Subject) rule.Verdict {
	if v, ok := s.verdict[sub.User]; ok {
		return v
	}
	return rule.Verdict{Match: true}
}

func (s *screener) Process(ctx context.Context, b pipeline.Batch) (pipeline.Result, error) {
	s.batch = b
	return s.releaseChecker.Process(ctx, b)
}

// TestBatchScreensBeforeConverting: events the Processor's screen drops are
// never converted, only counted in the batch; every event is still counted
// as received and the batch acknowledged.
func TestBatchScreensBeforeConverting(t *testing.T) {
	reg := prometheus.NewRegistry()
	excluded := rule.Verdict{Match: true, Excluded: true}
	pc := &screener{verdict: map[string]rule.Verdict{"x1": excluded, "x2": excluded, "n1": {}}}

	s := New(Options{Processor: pc, Insecure: true, Registerer: reg})
	b := batchMsg(3, "x1", "a1", "n1", "x2", "a2").GetBatch()
	for _, e := range b.Events {
		e.User.Username = e.AuditId // the screen sees the subject only
	}
	pc.proto = b
	st := &ackStream{}
	if err := s.batch(context.Background(), st, detect.Source{Cluster: "prod", Node: "cp-1"}, b, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range pc.batch.Events {
		ids = append(ids, e.AuditID)
	}
	if len(ids) != 2 || ids[0] != "a1" || ids[1] != "a2" || pc.batch.Excluded != 2 || pc.batch.NotMatched != 1 {
		t.Errorf("Process got events %q, Excluded %d, NotMatched %d; want [a1 a2], 2, 1", ids, pc.batch.Excluded, pc.batch.NotMatched)
	}
	if len(st.sent) != 1 || st.sent[0].GetAck().GetSeq() != 3 {
		t.Errorf("sent %v, want one ack of 3", st.sent)
	}
	var m dto.Metric
	if err := s.m.events.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 5 {
		t.Errorf("events received = %v, want 5", got)
	}
}
