// Package leak proves the contract's promise that the minted token never
// leaves the agent (issue 5): the real agent and aggregator run over an audit
// log whose token creates carry minted tokens (responseObject.status.token,
// RequestResponse level), some in awkward places, and every output is
// searched for any copy of any token: the bytes on the wire between them
// (through a recording proxy; one pass with mTLS, one in plaintext so the
// gRPC frames can be read), both processes' debug logs, both /metrics
// endpoints during and after the run, every OTLP record received, the
// stdout OTLP JSON, and every file under both state directories.
package leak

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/plog"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

var (
	suite harness.Suite
	// devcerts is the product's certificate tool (cmd/devcerts).
	devcerts string
)

func TestMain(m *testing.M) {
	os.Exit(suite.Main(m, harness.MainOptions{Leaks: true, Setup: func(dir string) (err error) {
		devcerts, err = buildDevcerts(dir)
		return err
	}}))
}

func buildDevcerts(dir string) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/devcerts")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/devcerts: %w\n%s", err, out)
	}
	return filepath.Join(dir, "devcerts"), nil
}

const (
	cluster     = "c1"
	node        = "cp-1"
	plantedName = "planted (forwarded on purpose)"
)

// TestMintedTokenNeverLeaves runs two passes over the same log: mTLS with
// the alerts exported to an OTLP receiver, and plaintext (loopback) with
// the alerts written to stdout as OTLP JSON. Each pass must deliver every
// expected alert and loss report, must show the control string where it is
// forwarded, and must not show any token anywhere.
func TestMintedTokenNeverLeaves(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()

	genLog, expect := filepath.Join(dir, "genaudit.log"), filepath.Join(dir, "expected.json")
	gen := harness.Start(t, logs, "genaudit", b.GenAudit, "-o", genLog, "-seed", "5", "-lines", "3000",
		"-response-tokens", "-expect", expect)
	if err := gen.Wait(time.Minute); err != nil {
		t.Fatalf("genaudit: %v", err)
	}
	genTokens := harness.ResponseTokens(t, genLog)
	genWants := harness.LoadWants(t, expect, cluster)
	if len(genTokens) == 0 || len(genWants) == 0 {
		t.Fatalf("genaudit wrote %d minted tokens and %d expected alerts; want both > 0", len(genTokens), len(genWants))
	}
	genData, err := os.ReadFile(genLog)
	if err != nil {
		t.Fatal(err)
	}
	lg := buildLog(t, cluster, genData, genTokens, genWants)
	var names, secrets []string
	for n := range lg.Secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		secrets = append(secrets, lg.Secrets[n])
	}
	names, secrets = append(names, plantedName), append(secrets, lg.Planted)
	sec := NewSecrets(names, secrets)
	for i, s := range secrets {
		if got := sec.Find([]byte(s)); len(got) == 0 {
			t.Fatalf("the search does not find secret %s in itself", names[i])
		}
	}
	t.Logf("audit log: %d bytes, then %d after rotation; %d secrets (%d from genaudit); %d+%d expected alerts, losses %v then %v",
		len(lg.Data), len(lg.After), len(secrets)-1, len(genTokens), len(lg.Wants), len(lg.AfterWants), lg.Losses, lg.AfterLosses)

	certDir := filepath.Join(dir, "certs")
	dc := harness.Start(t, logs, "devcerts", devcerts, "-out", certDir, "-clusters", cluster)
	if err := dc.Wait(time.Minute); err != nil {
		t.Fatalf("devcerts: %v", err)
	}
	cert := func(name string) string { return filepath.Join(certDir, name) }

	for _, p := range []pass{
		{name: "mtls-otlp", tls: true, otlp: true},
		{name: "plaintext-stdout"},
	} {
		if p.tls {
			p.server = &harness.ServerTLS{Cert: cert("server.crt"), Key: cert("server.key"), ClientCA: cert("ca.crt")}
			p.client = &harness.ClientTLS{Cert: cert("agent-c1.crt"), Key: cert("agent-c1.key"), CA: cert("ca.crt")}
		}
		t.Run(p.name, func(t *testing.T) { p.run(t, b, lg, sec) })
	}
}

type pass struct {
	name   string
	tls    bool // mTLS between agent and aggregator; else --insecure
	otlp   bool // export to an OTLP receiver; else stdout
	server *harness.ServerTLS
	client *harness.ClientTLS
}

func (p pass) run(t *testing.T, b *harness.Binaries, lg *Log, sec *Secrets) {
	start := time.Now()
	logs := harness.LogDir(t)
	dir := t.TempDir()
	auditDir := filepath.Join(dir, "audit")
	if err := os.Mkdir(auditDir, 0o755); err != nil {
		t.Fatal(err)
	}
	auditLog := filepath.Join(auditDir, "audit.log")
	if err := os.WriteFile(auditLog, lg.Data, 0o600); err != nil {
		t.Fatal(err)
	}

	var sink *harness.Sink
	endpoint := ""
	if p.otlp {
		sink = harness.StartSink(t)
		endpoint = sink.Endpoint
	}
	agg := harness.NewAggregator(t, b, logs, endpoint)
	agg.TLS = p.server
	agg.Extra = []string{"--log-level", "debug"}
	agg.Start(t)
	wire := StartRecorder(t, agg.Listen)

	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: cluster, Node: node, AuditLog: auditLog,
		Aggregator: wire.Addr, StateDir: filepath.Join(dir, "agent-state"), Metrics: harness.Addr(harness.FreePort(t)),
		StartAt: "beginning", TLS: p.client, Extra: []string{"--log-level", "debug"}}
	agent.Start(t)

	var scrapes []scrape
	scrapeBoth := func(when string) {
		scrapes = append(scrapes, scrapeMetrics(t, "agent /metrics "+when, agent.Metrics),
			scrapeMetrics(t, "aggregator /metrics "+when, agg.Metrics))
	}
	scrapeBoth("at start")

	records := func() []harness.Record {
		if sink != nil {
			return sink.Records()
		}
		out, _ := agg.Proc.Output()
		recs, err := stdoutRecords(out)
		if err != nil {
			t.Fatalf("aggregator stdout: %v", err)
		}
		return recs
	}
	keys, losses := harness.KeysOf(lg.Wants), lg.Losses
	complete := func(recs []harness.Record) bool {
		return harness.CountDistinct(recs, keys) == len(keys) && len(missingLosses(recs, losses)) == 0
	}
	if !waitRecords(sink, records, complete, 45*time.Second) {
		t.Errorf("not every expected alert and loss arrived within 45 s")
	}
	scrapeBoth("after the alerts")

	// Rotate as the apiserver's log backend does (rename, new live file),
	// with the torn line left at the end of the rotated file.
	if err := os.Rename(auditLog, filepath.Join(auditDir, "audit-2026-11-26T10-05-00.000.log")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auditLog, lg.After, 0o600); err != nil {
		t.Fatal(err)
	}
	wants := append(append([]harness.Want(nil), lg.Wants...), lg.AfterWants...)
	keys, losses = harness.KeysOf(wants), append(append([]string(nil), lg.Losses...), lg.AfterLosses...)
	if !waitRecords(sink, records, complete, 30*time.Second) {
		t.Errorf("the alert of the rotated-to file or the loss of the rotated torn line did not arrive within 30 s")
	}
	scrapeBoth("after the rotation")
	quiet(sink, records, 3*time.Second, 15*time.Second)
	scrapeBoth("at the end")

	if err := agent.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("agent did not stop cleanly on SIGTERM: %v", err)
	}
	scrapes = append(scrapes, scrapeMetrics(t, "aggregator /metrics after the agent stopped", agg.Metrics))
	if err := agg.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator did not stop cleanly on SIGTERM: %v", err)
	}
	wire.Close()

	// The alerts did arrive, so nothing below passes for want of output.
	recs := records()
	harness.Report(t, p.name, harness.Compare(recs, wants))
	if miss := missingLosses(recs, losses); len(miss) > 0 {
		t.Errorf("no audit_data_lost record for %v", miss)
	}

	leaks := &Leaks{s: sec, planted: plantedName}

	// The wire.
	caps := wire.Captures()
	if len(caps) == 0 {
		t.Fatal("the recording proxy saw no connection: the agent did not stream through it")
	}
	var up, plainMsgs []byte
	plantedOnWire := false
	for i, c := range caps {
		plantedOnWire = leaks.Check(fmt.Sprintf("wire connection %d agent->aggregator", i), c.Up) || plantedOnWire
		leaks.Check(fmt.Sprintf("wire connection %d aggregator->agent", i), c.Down)
		up = append(up, c.Up...)
		if p.tls {
			continue
		}
		for _, d := range []struct {
			name string
			raw  []byte
			up   bool
		}{{"agent->aggregator", c.Up, true}, {"aggregator->agent", c.Down, false}} {
			msgs, err := GRPCMessages(d.raw)
			if err != nil {
				t.Errorf("wire connection %d %s: %v", i, d.name, err)
			}
			for j, m := range msgs {
				planted := leaks.Check(fmt.Sprintf("wire connection %d %s gRPC message %d", i, d.name, j), m)
				if d.up {
					plantedOnWire = plantedOnWire || planted
					plainMsgs = append(plainMsgs, m...)
				}
			}
		}
	}
	if p.tls {
		if bytes.Contains(up, []byte(control)) {
			t.Errorf("the control string is readable on the mTLS wire: the stream is not encrypted")
		}
		if plantedOnWire {
			t.Errorf("the planted token is found on the mTLS wire: the stream is not encrypted")
		}
		if len(up) < 1<<10 {
			t.Errorf("only %d bytes went from the agent over the mTLS wire", len(up))
		}
	} else {
		if !bytes.Contains(plainMsgs, []byte(control)) {
			t.Errorf("the control string (a forwarded user agent) is not in the recorded plaintext gRPC messages: the capture does not show what was sent")
		}
		if !plantedOnWire {
			t.Errorf("the planted token (forwarded in the user agent) is not found on the plaintext wire: the search does not see what was sent")
		}
	}

	// Process output: debug logs on stderr, and stdout (OTLP JSON when no
	// endpoint is set).
	for _, proc := range []*harness.Proc{agent.Proc, agg.Proc} {
		stdout, stderr := proc.Output()
		leaks.Check(proc.Name+" stdout", stdout)
		leaks.Check(proc.Name+" stderr", stderr)
		if len(stderr) == 0 {
			t.Errorf("%s wrote no log", proc.Name)
		}
	}
	if !p.otlp {
		out, _ := agg.Proc.Output()
		if !bytes.Contains(out, []byte(control)) {
			t.Errorf("the control string is not in the aggregator's stdout OTLP JSON")
		}
		if !leaks.seen[agg.Proc.Name+" stdout"] {
			t.Errorf("the planted token (forwarded in the user agent) is not found in the aggregator's stdout OTLP JSON")
		}
	}

	// Metrics.
	for _, s := range scrapes {
		leaks.Check(s.where, s.body)
	}

	// OTLP as received: the JSON and the protobuf encoding of each payload.
	if sink != nil {
		var all []byte
		plantedInOTLP := false
		var jm plog.JSONMarshaler
		var pm plog.ProtoMarshaler
		for i, ld := range sink.Raw() {
			js, err := jm.MarshalLogs(ld)
			if err != nil {
				t.Fatal(err)
			}
			pb, err := pm.MarshalLogs(ld)
			if err != nil {
				t.Fatal(err)
			}
			plantedInOTLP = leaks.Check(fmt.Sprintf("OTLP payload %d (JSON)", i), js) || plantedInOTLP
			plantedInOTLP = leaks.Check(fmt.Sprintf("OTLP payload %d (protobuf)", i), pb) || plantedInOTLP
			all = append(all, js...)
		}
		if !bytes.Contains(all, []byte(control)) {
			t.Errorf("the control string is not in the OTLP records received")
		}
		if !plantedInOTLP {
			t.Errorf("the planted token (forwarded in the user agent) is not found in the OTLP records received")
		}
	}

	// State: the agent's checkpoint and the aggregator's database, raw.
	files := 0
	for _, d := range []string{agent.StateDir, agg.StateDir} {
		err := filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			leaks.Check("state file "+path, data)
			return nil
		})
		if err != nil {
			t.Errorf("state dir %s: %v", d, err)
		}
	}
	if files < 2 {
		t.Errorf("found %d state files under the agent's and the aggregator's state dirs; want the checkpoint and the database", files)
	}

	for _, f := range leaks.found {
		t.Errorf("minted token leaked: %s", f)
	}
	var seen []string
	for w := range leaks.seen {
		seen = append(seen, w)
	}
	sort.Strings(seen)
	t.Logf("pass %s: %d records; searched %d outputs (%d bytes) for %d secrets: %d with a leak; the planted token is in %d: %s; %v",
		p.name, len(recs), leaks.checked, leaks.bytes, len(sec.names)-1, len(leaks.found), len(seen), strings.Join(seen, "; "),
		time.Since(start).Round(time.Millisecond))
}

type scrape struct {
	where string
	body  []byte
}

func scrapeMetrics(t testing.TB, where, addr string) scrape {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return scrape{where: where}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("# TYPE ")) {
		t.Errorf("%s: status %s, %d bytes, error %v: not a Prometheus exposition", where, resp.Status, len(body), err)
	}
	return scrape{where: where, body: body}
}

// missingLosses returns the reasons without an audit_data_lost record.
func missingLosses(recs []harness.Record, reasons []string) []string {
	have := map[string]bool{}
	for _, r := range harness.ByEvent(recs, harness.EventPipeline) {
		if r.Str("tokenwatch.pipeline.kind") == "audit_data_lost" {
			have[r.Str("tokenwatch.loss.reason")] = true
		}
	}
	var miss []string
	for _, r := range reasons {
		if !have[r] {
			miss = append(miss, r)
		}
	}
	return miss
}

// waitRecords waits for cond: on the sink's signal, or by reading stdout
// again every 100 ms (a file has no signal).
func waitRecords(sink *harness.Sink, records func() []harness.Record, cond func([]harness.Record) bool, timeout time.Duration) bool {
	if sink != nil {
		return sink.WaitProgress(20*time.Second, timeout, cond)
	}
	deadline := time.Now().Add(timeout)
	for !cond(records()) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// quiet waits until no record has arrived for d (late duplicates or stray
// records would show in the exact comparison), or max passes.
func quiet(sink *harness.Sink, records func() []harness.Record, d, max time.Duration) {
	if sink != nil {
		sink.Quiet(d, max)
		return
	}
	end := time.Now().Add(max)
	n, since := len(records()), time.Now()
	for time.Now().Before(end) && time.Since(since) < d {
		time.Sleep(100 * time.Millisecond)
		if m := len(records()); m != n {
			n, since = m, time.Now()
		}
	}
}

// stdoutRecords decodes the aggregator's stdout: one OTLP JSON
// {"resourceLogs":[...]} object per line. A last line without its newline
// is still being written and is left for the next read.
func stdoutRecords(out []byte) ([]harness.Record, error) {
	if i := bytes.LastIndexByte(out, '\n'); i >= 0 {
		out = out[:i+1]
	} else {
		out = nil
	}
	var recs []harness.Record
	var um plog.JSONUnmarshaler
	for n, line := range bytes.Split(out, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		ld, err := um.UnmarshalLogs(line)
		if err != nil {
			return nil, fmt.Errorf("line %d is not OTLP JSON: %w: %.200s", n+1, err, line)
		}
		rls := ld.ResourceLogs()
		for i := 0; i < rls.Len(); i++ {
			rl := rls.At(i)
			res := rl.Resource().Attributes().AsRaw()
			for j := 0; j < rl.ScopeLogs().Len(); j++ {
				lrs := rl.ScopeLogs().At(j).LogRecords()
				for k := 0; k < lrs.Len(); k++ {
					lr := lrs.At(k)
					recs = append(recs, harness.Record{EventName: lr.EventName(), SeverityText: lr.SeverityText(),
						SeverityNumber: int(lr.SeverityNumber()), Time: lr.Timestamp().AsTime(),
						Body: lr.Body().AsString(), Attrs: lr.Attributes().AsRaw(), Resource: res})
				}
			}
		}
	}
	return recs, nil
}
