package check

import (
	"compress/gzip"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/protobuf/proto"
)

// siemRecipes lists the collector configs under deploy/otelcol/recipes: a
// new recipe is validated without touching the tests.
func siemRecipes(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(deployPath(t, "otelcol", "recipes", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	// The recipes the README promises: one for each SIEM whose exporter
	// the module proxy serves at the pinned collector version.
	for _, want := range []string{"loki.yaml"} {
		if !slices.Contains(names, want) {
			t.Fatalf("deploy/otelcol/recipes: no %s (have %v)", want, names)
		}
	}
	return names
}

// TestSiemRecipesValidate runs the built collector's own `validate` on every
// recipe of deploy/otelcol/recipes: its components exist in the build, its
// OTTL conditions parse, its pipelines connect.
func TestSiemRecipesValidate(t *testing.T) {
	names := siemRecipes(t)
	bin := collector(t)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(bin, "validate", "--config", deployPath(t, "otelcol", "recipes", name))
			cmd.Env = os.Environ()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("tokenwatch-otelcol validate --config recipes/%s: %v\n%s", name, err, out)
			}
		})
	}
}

// lokiSink stands for Loki's OTLP endpoint: it records each request's path,
// tenant header and content type, and the records of its OTLP protobuf body.
type lokiSink struct {
	mu       sync.Mutex
	requests []string // "POST /otlp/v1/logs tenant=... type=..."
	logs     logSink
}

func (s *lokiSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body := io.Reader(r.Body)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req collogspb.ExportLogsServiceRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, r.Method+" "+r.URL.Path+" tenant="+r.Header.Get("X-Scope-OrgID")+" type="+r.Header.Get("Content-Type"))
	s.mu.Unlock()
	if _, err := s.logs.Export(r.Context(), &req); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	resp, _ := proto.Marshal(&collogspb.ExportLogsServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(resp)
}

// TestSiemLokiRoutes runs the collector with recipes/loki.yaml in front of a
// recording HTTP server standing for Loki, sends it one record of every
// tokenwatch kind, and checks that the security records reach Loki's OTLP
// path (<endpoint>/v1/logs) as OTLP protobuf with the tenant header and the
// attributes intact, and the rest the operations file, each exactly once.
func TestSiemLokiRoutes(t *testing.T) {
	bin := collector(t)
	dir := t.TempDir()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := &lokiSink{}
	srv := &http.Server{Handler: sink, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		_ = srv.Close()
		<-served
	}()

	const tenant = "security-team"
	opsPath := filepath.Join(dir, "operations.jsonl")
	stop := routeThroughCollector(t, bin, deployPath(t, "otelcol", "recipes", "loki.yaml"),
		"LOKI_OTLP_ENDPOINT=http://"+lis.Addr().String()+"/otlp",
		"LOKI_TENANT="+tenant,
		"OPERATIONS_LOG_PATH="+opsPath,
	)
	stop() // flushes the batch processors, the exporter's queue and the file

	sink.mu.Lock()
	requests := slices.Clone(sink.requests)
	sink.mu.Unlock()
	if len(requests) == 0 {
		t.Fatal("Loki received no request")
	}
	for _, r := range requests {
		if want := "POST /otlp/v1/logs tenant=" + tenant + " type=application/x-protobuf"; r != want {
			t.Errorf("Loki request %q, want %q", r, want)
		}
	}
	got := sink.logs.got()
	sort.Strings(got)
	if !slices.Equal(got, wantSecurity) {
		t.Errorf("Loki received %v, want %v", got, wantSecurity)
	}
	uuid := ""
	for _, lr := range sink.logs.received() {
		if lr.GetEventName() != "tokenwatch.token_request" {
			continue
		}
		for _, a := range lr.GetAttributes() {
			if a.GetKey() == "security_rule.uuid" {
				uuid = a.GetValue().GetStringValue()
			}
		}
	}
	if uuid != seedRuleUUID {
		t.Errorf("token_request at Loki: security_rule.uuid %q, want %q", uuid, seedRuleUUID)
	}
	ops := readOperations(t, opsPath)
	if !slices.Equal(ops, wantOperations) {
		t.Errorf("operations file received %v, want %v", ops, wantOperations)
	}
	t.Logf("Loki: %d records in %d requests (%s)", len(got), len(requests), strings.Join(slices.Compact(requests), ", "))
}

var _ http.Handler = (*lokiSink)(nil)
