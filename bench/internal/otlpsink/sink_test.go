package otlpsink

import (
	"context"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func record(auditID string) *logspb.LogRecord { return recordKey(AuditIDKey, auditID) }

func recordKey(key, auditID string) *logspb.LogRecord {
	lr := &logspb.LogRecord{EventName: "tokenwatch.token_request"}
	if auditID != "" {
		lr.Attributes = []*commonpb.KeyValue{
			{Key: "user.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "alice"}}},
			{Key: key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: auditID}}},
		}
	}
	return lr
}

func TestSinkRecordsArrivals(t *testing.T) {
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }

	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := collogspb.NewLogsServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	export := func(recs ...*logspb.LogRecord) {
		t.Helper()
		req := &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
			ScopeLogs: []*logspb.ScopeLogs{{LogRecords: recs}},
		}}}
		if _, err := c.Export(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	export(record("a"), record(""), record("b"))
	first := clock
	clock = clock.Add(time.Second)
	export(record("a"), recordKey(RawAuditIDKey, "c")) // a again: its first arrival counts

	if err := s.WaitRecords(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitIDs(ctx, []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	if got := s.Records(); got != 5 {
		t.Errorf("Records() = %d, want 5", got)
	}
	tests := []struct {
		id     string
		want   time.Time
		wantOK bool
	}{{"a", first, true}, {"b", first, true}, {"c", clock, true}, {"d", time.Time{}, false}}
	for _, tt := range tests {
		got, ok := s.Arrival(tt.id)
		if ok != tt.wantOK || !got.Equal(tt.want) {
			t.Errorf("Arrival(%q) = %v, %v, want %v, %v", tt.id, got, ok, tt.want, tt.wantOK)
		}
	}
	use := record("a")
	use.EventName = "tokenwatch.token_use"
	export(use) // a third record of a, the first of its name
	if err := s.WaitRecords(ctx, 6); err != nil {
		t.Fatal(err)
	}
	byName := []struct {
		name, id string
		want     time.Time
		wantOK   bool
	}{
		{"tokenwatch.token_request", "a", first, true},
		{"tokenwatch.token_use", "a", clock, true},
		{"tokenwatch.token_use", "b", time.Time{}, false},
		{"tokenwatch.token_request", "c", clock, true},
	}
	for _, tt := range byName {
		got, ok := s.ArrivalOf(tt.name, tt.id)
		if ok != tt.wantOK || !got.Equal(tt.want) {
			t.Errorf("ArrivalOf(%q, %q) = %v, %v, want %v, %v", tt.name, tt.id, got, ok, tt.want, tt.wantOK)
		}
	}

	short, cancelShort := context.WithCancel(ctx)
	cancelShort()
	if err := s.WaitIDs(short, []string{"d"}); err == nil {
		t.Error("WaitIDs for a missing record returned nil after its context ended")
	}
	if err := s.Stop(); err != nil {
		t.Errorf("Stop = %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop = %v", err)
	}
}
