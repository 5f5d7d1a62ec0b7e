package check

import (
	"compress/gzip"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/protobuf/proto"
	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// siemRecipes lists the recipes under deploy/otelcol/recipes: each a
// directory with a collector config.yaml and a kustomize component that
// deploys deploy/otelcol with it. A new recipe is checked without touching the tests.
func siemRecipes(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(deployPath(t, "otelcol", "recipes", "*", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, filepath.Base(filepath.Dir(f)))
	}
	// The recipes the README promises: one for each SIEM whose exporter
	// the module proxy serves at the pinned collector version.
	for _, want := range []string{"loki"} {
		if !slices.Contains(names, want) {
			t.Fatalf("deploy/otelcol/recipes: no %s/config.yaml (have %v)", want, names)
		}
	}
	return names
}

// TestSiemRecipesValidate runs the built collector's own `validate` on every
// recipe's config.yaml: its components exist in the build, its OTTL
// conditions parse, its pipelines connect.
func TestSiemRecipesValidate(t *testing.T) {
	names := siemRecipes(t)
	bin := collector(t)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(bin, "validate", "--config", deployPath(t, "otelcol", "recipes", name, "config.yaml"))
			cmd.Env = os.Environ()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("tokenwatch-otelcol validate --config recipes/%s/config.yaml: %v\n%s", name, err, out)
			}
		})
	}
}

// envRef matches the collector config's ${env:NAME} and ${env:NAME:-default}.
var envRef = regexp.MustCompile(`\$\{env:([A-Za-z_][A-Za-z0-9_]*)`)

// TestSiemRecipesRender renders deploy/otelcol with each recipe's component:
// the collector
// Deployment of deploy/otelcol mounts the recipe's config.yaml unchanged,
// its environment sets every variable the config reads, and its
// NetworkPolicy lets it reach the port of the destination's endpoint.
func TestSiemRecipesRender(t *testing.T) {
	endpoints := map[string]string{"loki": "LOKI_OTLP_ENDPOINT"}
	for _, name := range siemRecipes(t) {
		t.Run(name, func(t *testing.T) {
			config, err := os.ReadFile(deployPath(t, "otelcol", "recipes", name, "config.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			// deploy/otelcol with the recipe's component, as its README says:
			// `components: [recipes/<name>]` added to its kustomization.
			dir := filepath.Join(t.TempDir(), "otelcol")
			if err := os.CopyFS(dir, os.DirFS(deployPath(t, "otelcol"))); err != nil {
				t.Fatal(err)
			}
			kust, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			kust = append(kust, "components:\n  - recipes/"+name+"\n"...)
			if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), kust, 0o644); err != nil {
				t.Fatal(err)
			}
			objs := kustomizeBuild(t, dir)
			var dep appsv1.Deployment
			decode(t, find(objs, "Deployment", "otel-collector"), &dep)
			spec := dep.Spec.Template.Spec
			mounted := ""
			for _, v := range spec.Volumes {
				if v.ConfigMap != nil {
					if cm := find(objs, "ConfigMap", v.ConfigMap.Name); cm != nil {
						mounted, _ = cm.path("data", "config.yaml").(string)
					}
				}
			}
			if mounted != string(config) {
				t.Errorf("the Deployment does not mount recipes/%s/config.yaml as config.yaml", name)
			}

			env := map[string]string{}
			c := spec.Containers[0]
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef == nil {
					continue
				}
				cm := find(objs, "ConfigMap", ef.ConfigMapRef.Name)
				if cm == nil {
					t.Fatalf("ConfigMap %s not rendered", ef.ConfigMapRef.Name)
				}
				for k, v := range cm["data"].(map[string]any) {
					env[k], _ = v.(string)
				}
			}
			for _, e := range c.Env {
				env[e.Name] = e.Value
			}
			for _, m := range envRef.FindAllSubmatch(config, -1) {
				if _, ok := env[string(m[1])]; !ok {
					t.Errorf("recipes/%s/config.yaml reads ${env:%s}; the Deployment does not set it", name, m[1])
				}
			}

			endpoint, err := url.Parse(env[endpoints[name]])
			if err != nil || endpoint.Host == "" {
				t.Fatalf("%s=%q: not a URL (%v)", endpoints[name], env[endpoints[name]], err)
			}
			port := endpoint.Port()
			if port == "" {
				port = map[string]string{"http": "80", "https": "443"}[endpoint.Scheme]
			}
			var np networkingv1.NetworkPolicy
			decode(t, find(objs, "NetworkPolicy", "otel-collector"), &np)
			open := false
			for _, rule := range np.Spec.Egress {
				for _, p := range rule.Ports {
					if p.Port != nil && p.Port.String() == port && len(rule.To) == 0 {
						open = true
					}
				}
			}
			if !open {
				t.Errorf("NetworkPolicy otel-collector: no egress to port %s of %s", port, endpoint)
			}
		})
	}
}

// lokiSink stands for Loki's OTLP endpoint: it records each request's path,
// tenant header and content type, and the records of its OTLP protobuf body.
type lokiSink struct {
	mu       sync.Mutex
	requests []string // "POST /otlp/v1/logs tenant=... type=... encoding=..."
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
	s.requests = append(s.requests, r.Method+" "+r.URL.Path+" tenant="+r.Header.Get("X-Scope-OrgID")+" type="+r.Header.Get("Content-Type")+" encoding="+r.Header.Get("Content-Encoding"))
	s.mu.Unlock()
	if _, err := s.logs.Export(r.Context(), &req); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	resp, _ := proto.Marshal(&collogspb.ExportLogsServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(resp)
}

// TestSiemLokiRoutes runs the collector with recipes/loki/config.yaml in front of a
// recording HTTP server standing for Loki, sends it one record of every
// tokenwatch kind, and checks that the security records reach Loki's OTLP
// path (<endpoint>/v1/logs) as gzipped OTLP protobuf with the tenant header and the
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
	stop := routeThroughCollector(t, bin, deployPath(t, "otelcol", "recipes", "loki", "config.yaml"),
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
		if want := "POST /otlp/v1/logs tenant=" + tenant + " type=application/x-protobuf encoding=gzip"; r != want {
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
