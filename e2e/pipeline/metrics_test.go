package pipeline

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
	"github.com/tokenwatch/tokenwatch/e2e/internal/kube"
)

// eventOnly are metrics the rules and dashboard use that a healthy run
// cannot show: a vector whose label values (loss reasons, silent clusters)
// are only known once it happens.
var eventOnly = map[string]string{
	"tokenwatch_agent_losses_total":  "a loss report (its reasons are an open set)",
	"tokenwatch_aggregator_silences": "a cluster_silent (one series per silent cluster and reason)",
}

// TestMetricsUsedExist runs an mTLS agent and aggregator on loopback, feeds
// them a small audit log until records are exported, scrapes both /metrics
// and checks that every tokenwatch metric named by
// deploy/prometheus/{agent,aggregator}-rules.yaml and dashboard.json is
// exposed: a rename in the code that leaves the rules or the dashboard behind
// fails here.
func TestMetricsUsedExist(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{}
	name := regexp.MustCompile(`\btokenwatch_[a-z0-9_]+`)
	for _, f := range []string{"agent-rules.yaml", "aggregator-rules.yaml", "dashboard.json"} {
		path := filepath.Join(root, "deploy", "prometheus", f)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if f == "dashboard.json" && !json.Valid(data) {
			t.Fatalf("%s is not valid JSON", path)
		}
		for _, n := range name.FindAllString(string(data), -1) {
			used[n] = append(used[n], f)
		}
	}
	if len(used) < 10 {
		t.Fatalf("only %d metric names found in the rules and the dashboard", len(used))
	}

	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.log")
	gen := harness.Start(t, logs, "genaudit", b.GenAudit, "-o", auditLog, "-seed", "3", "-lines", "500")
	if err := gen.Wait(time.Minute); err != nil {
		t.Fatalf("genaudit: %v", err)
	}
	ca, err := kube.NewCA("tokenwatch-e2e")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name string, kp kube.KeyPair, err error) (string, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := kp.Write(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	kp, err := ca.Issue("aggregator", nil, "127.0.0.1", "localhost")
	sc, sk := write("aggregator", kp, err)
	kp, err = ca.IssueSPIFFE("agent-c1", "spiffe://tokenwatch/cluster/c1")
	ac, ak := write("agent-c1", kp, err)

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.TLS = &harness.ServerTLS{Cert: sc, Key: sk, ClientCA: caFile}
	agg.Start(t)
	a := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1", AuditLog: auditLog,
		Aggregator: agg.Listen, StateDir: filepath.Join(dir, "agent-state"), StartAt: "beginning",
		Metrics: harness.Addr(harness.FreePort(t)), TLS: &harness.ClientTLS{Cert: ac, Key: ak, CA: caFile}}
	a.Start(t)
	if !sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return len(r) > 0 }) {
		t.Fatal("no record exported within 60 s")
	}

	exposed := map[string]bool{}
	for _, addr := range []string{agg.Metrics, a.Metrics} {
		for n := range scrapeNames(t, "http://"+addr+"/metrics") {
			exposed[n] = true
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		switch {
		case exposed[n]:
		case eventOnly[n] != "":
			t.Logf("%s (used in %s): not checked, shown only after %s", n, strings.Join(used[n], ", "), eventOnly[n])
		default:
			t.Errorf("%s is used in deploy/prometheus/%s but neither the agent nor the aggregator exposes it", n, strings.Join(used[n], ", "))
		}
	}
	t.Logf("%d metric names used by the rules and the dashboard, %d exposed", len(names), len(exposed))
}

// scrapeNames returns the sample names on a /metrics page (histograms as
// their _bucket, _sum and _count series).
func scrapeNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	names := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}
