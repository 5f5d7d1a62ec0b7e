package export

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) {
	// Goldens must not change with the build version or the environment.
	version.Version = "0.0.0-test"
	os.Unsetenv("OTEL_RESOURCE_ATTRIBUTES")
	os.Unsetenv("OTEL_SERVICE_NAME")
	goleak.VerifyTestMain(m)
}

var (
	t0       = time.Date(2026, 5, 1, 12, 0, 0, 123456000, time.UTC)
	observed = time.Date(2026, 5, 1, 12, 0, 3, 0, time.UTC)
)

// sampleRecords are one record of each event name, with every attribute kind.
func sampleRecords() []alert.Record {
	return []alert.Record{
		{
			ID:        "tr-1",
			EventName: alert.EventTokenRequest,
			Time:      t0,
			Severity:  alert.Medium,
			Body:      `mallory minted a token for service account "team-a/builder" in cluster prod from 192.0.2.7`,
			Attrs: []alert.Attr{
				alert.String("k8s.cluster.name", "prod"),
				alert.String("kubernetes.audit.auditID", "5a1b0c2d-0000-4000-8000-000000000001"),
				alert.String("user.name", "mallory"),
				alert.Strings("kubernetes.audit.user.groups", []string{"system:authenticated", "devs"}),
				alert.Strings("kubernetes.audit.sourceIPs", []string{"10.0.0.1", "192.0.2.7"}),
				alert.String("source.ip", "192.0.2.7"),
				alert.Int("kubernetes.audit.responseStatus.code", 201),
				alert.Int("kubernetes.audit.requestObject.spec.expirationSeconds", 3600),
				alert.Bool("tokenwatch.dry_run", false),
				alert.Strings("kubernetes.audit.requestObject.spec.audiences", nil),
				alert.Int("event.risk_score", 47),
			},
		},
		{
			ID:        "corr-1",
			EventName: alert.EventCorrelation,
			Time:      t0.Add(time.Minute),
			Severity:  alert.High,
			Body:      "mallory minted tokens in 2 clusters within 10m",
			Attrs: []alert.Attr{
				alert.String("tokenwatch.correlation.kind", "multi_cluster_actor"),
				alert.Strings("k8s.cluster.names", []string{"prod", "stage"}),
			},
		},
		{
			ID:        "pipe-1",
			EventName: alert.EventPipeline,
			Time:      t0.Add(2 * time.Minute),
			Severity:  alert.Low,
			Body:      "cluster prod node cp-1 is heard from again after 360s",
			Attrs: []alert.Attr{
				alert.String("tokenwatch.pipeline.kind", "cluster_resumed"),
				alert.Int("tokenwatch.silent_for_seconds", 360),
			},
		},
	}
}

// sink is a recording OTLP logs collector service.
type sink struct {
	collogspb.UnimplementedLogsServiceServer
	mu      sync.Mutex
	reqs    []*collogspb.ExportLogsServiceRequest
	got     chan struct{}
	partial int64 // when > 0, answer with a partial success rejecting this many
}

func (s *sink) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, proto.Clone(req).(*collogspb.ExportLogsServiceRequest))
	partial := s.partial
	s.mu.Unlock()
	select {
	case s.got <- struct{}{}:
	default:
	}
	resp := &collogspb.ExportLogsServiceResponse{}
	if partial > 0 {
		resp.PartialSuccess = &collogspb.ExportLogsPartialSuccess{RejectedLogRecords: partial, ErrorMessage: "too old"}
	}
	return resp, nil
}

func (s *sink) requests() []*collogspb.ExportLogsServiceRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*collogspb.ExportLogsServiceRequest(nil), s.reqs...)
}

func (s *sink) records() []*logspb.LogRecord {
	var out []*logspb.LogRecord
	for _, r := range s.requests() {
		for _, rl := range r.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				out = append(out, sl.LogRecords...)
			}
		}
	}
	return out
}

// waitRecords waits until the sink holds at least n records.
func (s *sink) waitRecords(t *testing.T, n int) []*logspb.LogRecord {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		if recs := s.records(); len(recs) >= n {
			return recs
		}
		select {
		case <-s.got:
		case <-timeout:
			t.Fatalf("sink holds %d records, want %d", len(s.records()), n)
		}
	}
}

// startSink serves a sink on addr ("127.0.0.1:0" for any port) until the
// test ends or stop is called.
func startSink(t testing.TB, addr string) (s *sink, endpoint string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s = &sink{got: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(srv, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			srv.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return s, lis.Addr().String(), stop
}

func newTestOTLP(t *testing.T, endpoint string) *OTLP {
	t.Helper()
	o, err := NewOTLP(context.Background(), Config{Endpoint: endpoint, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	o.now = func() time.Time { return observed }
	t.Cleanup(func() { o.Shutdown(context.Background()) })
	return o
}

func newTestJSON(w *bytes.Buffer) *JSON {
	j := NewJSON(w)
	j.now = func() time.Time { return observed }
	return j
}

// TestOTLPExport sends records through the SDK and otlploggrpc to a real
// gRPC collector service and checks what arrives.
func TestOTLPExport(t *testing.T) {
	s, endpoint, _ := startSink(t, "127.0.0.1:0")
	o := newTestOTLP(t, endpoint)
	recs := sampleRecords()
	if err := o.Export(context.Background(), recs); err != nil {
		t.Fatalf("Export: %v", err)
	}
	reqs := s.requests()
	if len(reqs) != 1 {
		t.Fatalf("sink got %d requests, want 1", len(reqs))
	}
	req := reqs[0]
	if len(req.ResourceLogs) != 1 || len(req.ResourceLogs[0].ScopeLogs) != 1 {
		t.Fatalf("want one resource and one scope, got %v", req)
	}
	res := map[string]string{}
	for _, kv := range req.ResourceLogs[0].Resource.Attributes {
		res[kv.Key] = kv.Value.GetStringValue()
	}
	wantRes := map[string]string{"service.name": "tokenwatch-aggregator", "service.version": "0.0.0-test"}
	if diff := cmp.Diff(wantRes, res); diff != "" {
		t.Errorf("resource attributes (-want +got):\n%s", diff)
	}
	scope := req.ResourceLogs[0].ScopeLogs[0].Scope
	if scope.GetName() != ScopeName || scope.GetVersion() != "0.0.0-test" {
		t.Errorf("scope = %v, want %s 0.0.0-test", scope, ScopeName)
	}
	got := req.ResourceLogs[0].ScopeLogs[0].LogRecords
	if len(got) != len(recs) {
		t.Fatalf("got %d records, want %d", len(got), len(recs))
	}
	tests := []struct {
		name string
		give int
		want func(*logspb.LogRecord) string // "" when fine
	}{
		{"event name", 0, func(r *logspb.LogRecord) string { return cmp.Diff(alert.EventTokenRequest, r.EventName) }},
		{"no event.name attribute", 0, func(r *logspb.LogRecord) string {
			for _, kv := range r.Attributes {
				if kv.Key == "event.name" {
					return "has event.name attribute"
				}
			}
			return ""
		}},
		{"severity text", 0, func(r *logspb.LogRecord) string { return cmp.Diff("medium", r.SeverityText) }},
		{"severity number", 0, func(r *logspb.LogRecord) string {
			return cmp.Diff(logspb.SeverityNumber_SEVERITY_NUMBER_WARN, r.SeverityNumber)
		}},
		{"high", 1, func(r *logspb.LogRecord) string {
			return cmp.Diff(logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, r.SeverityNumber)
		}},
		{"low", 2, func(r *logspb.LogRecord) string {
			return cmp.Diff(logspb.SeverityNumber_SEVERITY_NUMBER_INFO, r.SeverityNumber) + cmp.Diff("low", r.SeverityText)
		}},
		{"timestamp", 0, func(r *logspb.LogRecord) string { return cmp.Diff(uint64(t0.UnixNano()), r.TimeUnixNano) }},
		{"observed", 0, func(r *logspb.LogRecord) string { return cmp.Diff(uint64(observed.UnixNano()), r.ObservedTimeUnixNano) }},
		{"body is a string", 0, func(r *logspb.LogRecord) string { return cmp.Diff(recs[0].Body, r.Body.GetStringValue()) }},
		{"string attribute", 0, func(r *logspb.LogRecord) string { return cmp.Diff("mallory", attr(r, "user.name").GetStringValue()) }},
		{"int attribute", 0, func(r *logspb.LogRecord) string {
			return cmp.Diff(int64(201), attr(r, "kubernetes.audit.responseStatus.code").GetIntValue())
		}},
		{"bool attribute", 0, func(r *logspb.LogRecord) string {
			v := attr(r, "tokenwatch.dry_run")
			if v == nil {
				return "missing"
			}
			return cmp.Diff(false, v.GetBoolValue()) + cmp.Diff("*v1.AnyValue_BoolValue", typeName(v.GetValue()))
		}},
		{"string array attribute", 0, func(r *logspb.LogRecord) string {
			var ss []string
			for _, v := range attr(r, "kubernetes.audit.sourceIPs").GetArrayValue().GetValues() {
				ss = append(ss, v.GetStringValue())
			}
			return cmp.Diff([]string{"10.0.0.1", "192.0.2.7"}, ss)
		}},
		{"empty array attribute", 0, func(r *logspb.LogRecord) string {
			return cmp.Diff("*v1.AnyValue_ArrayValue", typeName(attr(r, "kubernetes.audit.requestObject.spec.audiences").GetValue()))
		}},
		{"attribute count and order", 0, func(r *logspb.LogRecord) string {
			var keys []string
			for _, kv := range r.Attributes {
				keys = append(keys, kv.Key)
			}
			var want []string
			for _, a := range recs[0].Attrs {
				want = append(want, a.Key)
			}
			return cmp.Diff(want, keys)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := tt.want(got[tt.give]); diff != "" {
				t.Errorf("record %d: %s", tt.give, diff)
			}
		})
	}
}

func attr(r *logspb.LogRecord, key string) *commonpb.AnyValue {
	for _, kv := range r.Attributes {
		if kv.Key == key {
			return kv.Value
		}
	}
	return nil
}

func typeName(v any) string {
	if v == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%T", v)
}

// TestJSONMatchesOTLP checks that the stdout default writes exactly what the
// SDK path sends: the same request, field for field.
func TestJSONMatchesOTLP(t *testing.T) {
	s, endpoint, _ := startSink(t, "127.0.0.1:0")
	o := newTestOTLP(t, endpoint)
	recs := sampleRecords()
	if err := o.Export(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := newTestJSON(&buf).Export(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	var fromJSON collogspb.ExportLogsServiceRequest
	if err := protojson.Unmarshal(bytes.TrimSpace(buf.Bytes()), &fromJSON); err != nil {
		t.Fatalf("stdout line is not an OTLP JSON ExportLogsServiceRequest: %v", err)
	}
	if diff := cmp.Diff(s.requests()[0], &fromJSON, protocmp.Transform(), sortResourceAttrs()); diff != "" {
		t.Errorf("stdout JSON differs from the OTLP/gRPC request (-otlp +json):\n%s", diff)
	}
}

// sortResourceAttrs ignores the order of resource attributes (the SDK
// keeps a set).
func sortResourceAttrs() cmp.Option {
	return protocmp.SortRepeated(func(a, b *commonpb.KeyValue) bool { return a.Key < b.Key })
}

// TestJSONGolden pins the stdout format: one compact {"resourceLogs":[...]}
// object per export and line, readable by the otlpjsonfile receiver (which
// unmarshals each line into an ExportLogsServiceRequest).
func TestJSONGolden(t *testing.T) {
	var buf bytes.Buffer
	j := newTestJSON(&buf)
	recs := sampleRecords()
	for _, batch := range [][]alert.Record{recs[:1], recs[1:]} {
		if err := j.Export(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Export(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "stdout.golden.jsonl")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("stdout output differs from %s (-want +got):\n%s", golden, diff)
	}
	lines := strings.Split(strings.TrimSuffix(string(want), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("golden has %d lines, want 2 (one per export)", len(lines))
	}
	var n int
	for i, line := range lines {
		if !strings.HasPrefix(line, `{"resourceLogs":[`) {
			t.Errorf("line %d does not start with {\"resourceLogs\":[", i+1)
		}
		var req collogspb.ExportLogsServiceRequest
		if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal([]byte(line), &req); err != nil {
			t.Fatalf("line %d: otlpjsonfile would not read it: %v", i+1, err)
		}
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				for _, r := range sl.LogRecords {
					if r.EventName != recs[n].EventName || r.SeverityNumber != logspb.SeverityNumber(recs[n].Severity.Number) {
						t.Errorf("line %d record: %s/%d, want %s/%d", i+1, r.EventName, r.SeverityNumber, recs[n].EventName, recs[n].Severity.Number)
					}
					n++
				}
			}
		}
	}
	if n != len(recs) {
		t.Errorf("golden holds %d records, want %d", n, len(recs))
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestJSONWriteErrorIsReported(t *testing.T) {
	if err := NewJSON(failWriter{}).Export(context.Background(), sampleRecords()); err == nil {
		t.Fatal("Export to a failing writer = nil error")
	}
}

func TestConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name       string
		give       Config
		env        map[string]string
		wantErr    string
		wantStdout bool
	}{
		{"nothing configured", Config{}, nil, "", true},
		{"flag", Config{Endpoint: "collector:4317"}, nil, "", false},
		{"generic env", Config{}, map[string]string{EnvEndpoint: "http://collector:4317"}, "", false},
		{"logs env", Config{}, map[string]string{EnvLogsEndpoint: "https://collector:4317"}, "", false},
		{"url in flag", Config{Endpoint: "http://collector:4317"}, nil, "", false},
		{"url in flag contradicts insecure", Config{Endpoint: "https://collector:4317", Insecure: true}, nil, "https scheme means TLS", false},
		{"no port", Config{Endpoint: "collector"}, nil, "want HOST:PORT", false},
		{"negative timeout", Config{Timeout: -time.Second}, nil, "must not be negative", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
			if got := tt.give.UsesStdout(env(tt.env)); got != tt.wantStdout {
				t.Errorf("UsesStdout() = %v, want %v", got, tt.wantStdout)
			}
		})
	}
}

func TestNewPicksExporter(t *testing.T) {
	none := func(string) string { return "" }
	exp, err := New(context.Background(), Config{}, none, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := exp.(*JSON); !ok {
		t.Errorf("New without endpoint = %T, want *JSON", exp)
	}
	exp, err = New(context.Background(), Config{Endpoint: "127.0.0.1:4317", Insecure: true}, none, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Shutdown(context.Background())
	if _, ok := exp.(*OTLP); !ok {
		t.Errorf("New with endpoint = %T, want *OTLP", exp)
	}
	if err := exp.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := exp.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}
