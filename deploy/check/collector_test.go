package check

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // the collector's OTLP exporter compresses
)

// collector builds (or finds in the cache) the collector that
// deploy/collector's builder manifest describes. A cold build takes several
// minutes; -short skips it.
func collector(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIP (visible): -short: the collector build takes minutes cold")
	}
	return runScript(t, 20*time.Minute, nil, filepath.Join(repoRoot(t), "deploy", "collector", "build.sh"))
}

// TestCollectorConfigValidates runs the built collector's own `validate` on
// deploy/otelcol/config.yaml: components, OTTL conditions, pipelines.
func TestCollectorConfigValidates(t *testing.T) {
	bin := collector(t)
	cmd := exec.Command(bin, "validate", "--config", deployPath(t, "otelcol", "config.yaml"))
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tokenwatch-otelcol validate: %v\n%s", err, out)
	}
}

// logSink is an OTLP/gRPC logs receiver that records what it receives and
// signals each arrival on notify (when not nil).
type logSink struct {
	collogspb.UnimplementedLogsServiceServer
	mu      sync.Mutex
	records []*logspb.LogRecord
	notify  chan struct{}
}

func (s *logSink) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	s.mu.Lock()
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			s.records = append(s.records, sl.GetLogRecords()...)
		}
	}
	s.mu.Unlock()
	if s.notify != nil {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// got returns the received records' keys (event name and pipeline kind).
func (s *logSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for _, lr := range s.records {
		keys = append(keys, recordKey(lr.GetEventName(), lr.GetAttributes()))
	}
	return keys
}

// received returns the records received so far.
func (s *logSink) received() []*logspb.LogRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.records)
}

// recordKey names a record by its event name and, for pipeline records, kind.
func recordKey(event string, attrs []*commonpb.KeyValue) string {
	for _, a := range attrs {
		if a.GetKey() == "tokenwatch.pipeline.kind" {
			return event + "/" + a.GetValue().GetStringValue()
		}
	}
	return event
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestCollectorRoutes runs the collector with deploy/otelcol/config.yaml,
// sends it one record of every tokenwatch kind, and checks that each record
// reaches exactly the destination the config promises: security records the
// OTLP exporter (a recording OTLP receiver here), the rest the file.
func TestCollectorRoutes(t *testing.T) {
	bin := collector(t)
	dir := t.TempDir()

	// The "SIEM": a recording OTLP/gRPC receiver.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := &logSink{}
	srv := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(srv, sink)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		<-served
	}()

	opsPath := filepath.Join(dir, "operations.jsonl")
	stop := routeThroughCollector(t, bin, deployPath(t, "otelcol", "config.yaml"),
		"SIEM_OTLP_ENDPOINT="+lis.Addr().String(),
		"SIEM_OTLP_INSECURE=true",
		"OPERATIONS_LOG_PATH="+opsPath,
	)
	// A graceful stop flushes the batch processors, the exporter's queue and
	// the file: then both destinations are complete and compared exactly.
	stop()
	got := sink.got()
	sort.Strings(got)
	if !slices.Equal(got, wantSecurity) {
		t.Errorf("SIEM (otlp_grpc/siem) received %v, want %v", got, wantSecurity)
	}
	ops := readOperations(t, opsPath)
	if !slices.Equal(ops, wantOperations) {
		t.Errorf("operations file received %v, want %v", ops, wantOperations)
	}
}

// The record keys (recordKey) of routingRequest's records that the routing
// configs send to the security destination, and to the operations file.
var (
	wantSecurity   = []string{"tokenwatch.correlation", "tokenwatch.pipeline/audit_data_lost", "tokenwatch.pipeline/cluster_silent", "tokenwatch.token_request"}
	wantOperations = []string{"tokenwatch.pipeline/alerts_suppressed", "tokenwatch.pipeline/cluster_resumed"}
)

// routingRequest holds one record of every tokenwatch kind, with the
// severities the aggregator gives them; the token_request record carries the
// seed rule's security_rule.uuid.
func routingRequest() *collogspb.ExportLogsServiceRequest {
	type rec struct {
		event, kind string
		sev         logspb.SeverityNumber
		text        string
	}
	records := []rec{
		{"tokenwatch.token_request", "", logspb.SeverityNumber_SEVERITY_NUMBER_WARN, "medium"},
		{"tokenwatch.correlation", "", logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, "high"},
		{"tokenwatch.pipeline", "cluster_silent", logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, "high"},
		{"tokenwatch.pipeline", "audit_data_lost", logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, "high"},
		{"tokenwatch.pipeline", "cluster_resumed", logspb.SeverityNumber_SEVERITY_NUMBER_INFO, "low"},
		{"tokenwatch.pipeline", "alerts_suppressed", logspb.SeverityNumber_SEVERITY_NUMBER_INFO, "low"},
	}
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	var lrs []*logspb.LogRecord
	now := uint64(time.Now().UnixNano())
	for _, r := range records {
		lr := &logspb.LogRecord{
			TimeUnixNano: now, ObservedTimeUnixNano: now, EventName: r.event,
			SeverityNumber: r.sev, SeverityText: r.text,
			Body: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "test record " + r.event + " " + r.kind}},
		}
		if r.kind != "" {
			lr.Attributes = []*commonpb.KeyValue{str("tokenwatch.pipeline.kind", r.kind)}
		}
		if r.event == "tokenwatch.token_request" {
			lr.Attributes = []*commonpb.KeyValue{str("security_rule.uuid", seedRuleUUID)}
		}
		lrs = append(lrs, lr)
	}
	return &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
		Resource:  &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", "tokenwatch-aggregator")}},
		ScopeLogs: []*logspb.ScopeLogs{{LogRecords: lrs}},
	}}}
}

// seedRuleUUID is the Elastic rule id tokenwatch's records carry as
// security_rule.uuid (docs/CONTRACT.md).
const seedRuleUUID = "4df91789-7859-4bc4-9c5a-6b56bfa81a8b"

// routeThroughCollector starts the collector with config and env (plus
// OTLP_GRPC_ENDPOINT, a free loopback port), sends it routingRequest over
// OTLP/gRPC, and returns a stop function: SIGTERM, which flushes every
// exporter, then wait. stop is safe twice and runs at cleanup too; the
// collector's stderr is logged when the test failed.
func routeThroughCollector(t *testing.T, bin, config string, env ...string) (stop func()) {
	t.Helper()
	listen := freeAddr(t)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--config", config)
	cmd.Env = append(append(os.Environ(), "OTLP_GRPC_ENDPOINT="+listen), env...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("collector stderr:\n%s", lastLines(stderr.String(), 40))
		}
	})

	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// WaitForReady: the collector is still starting; the RPC waits for it.
	if _, err := collogspb.NewLogsServiceClient(conn).Export(ctx, routingRequest(), grpc.WaitForReady(true)); err != nil {
		t.Fatalf("export to the collector: %v", err)
	}
	return stop
}

// readOperations reads the file exporter's OTLP JSON lines.
func readOperations(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("operations file: %v", err)
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var doc struct {
			ResourceLogs []struct {
				ScopeLogs []struct {
					LogRecords []struct {
						EventName  string `json:"eventName"`
						Attributes []struct {
							Key   string `json:"key"`
							Value struct {
								StringValue string `json:"stringValue"`
							} `json:"value"`
						} `json:"attributes"`
					} `json:"logRecords"`
				} `json:"scopeLogs"`
			} `json:"resourceLogs"`
		}
		if err := json.Unmarshal(sc.Bytes(), &doc); err != nil {
			t.Fatalf("operations file line: %v", err)
		}
		for _, rl := range doc.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					var attrs []*commonpb.KeyValue
					for _, a := range lr.Attributes {
						attrs = append(attrs, &commonpb.KeyValue{Key: a.Key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: a.Value.StringValue}}})
					}
					names = append(names, recordKey(lr.EventName, attrs))
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}
