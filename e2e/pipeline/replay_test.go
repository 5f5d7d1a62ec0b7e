package pipeline

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// genLog writes a generated audit log starting at start and returns the
// requests in it that must alert.
func genLog(t *testing.T, b *harness.Binaries, logs, path, seed, start, lines string) []harness.Want {
	t.Helper()
	expect := path + ".expect.json"
	gen := harness.Start(t, logs, "genaudit-"+seed, b.GenAudit, "-o", path, "-seed", seed, "-lines", lines,
		"-start", start, "-expect", expect)
	if err := gen.Wait(time.Minute); err != nil {
		t.Fatalf("genaudit: %v", err)
	}
	wants := harness.LoadWants(t, expect, "c1")
	if err := os.Remove(expect); err != nil {
		t.Fatal(err)
	}
	if len(wants) == 0 {
		t.Fatalf("generated log %s has no expected alerts", path)
	}
	return wants
}

// TestReplayDirectory replays a folder as an investigator would get it from
// a control-plane node: a gzipped lumberjack backup, a plain one and the
// live file, with modification times that lie (copied files). The agent
// reads them in log order (the names decide, the live file last) and every
// request alerts exactly once.
func TestReplayDirectory(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()
	oldest := filepath.Join(dir, "audit-2026-11-26T11-00-00.000.log")
	older := filepath.Join(dir, "audit-2026-11-26T12-00-00.000.log")
	live := filepath.Join(dir, "audit.log")
	var wants []harness.Want
	wants = append(wants, genLog(t, b, logs, oldest, "21", "2026-11-26T10:00:00Z", "3000")...)
	wants = append(wants, genLog(t, b, logs, older, "22", "2026-11-26T11:00:00Z", "3000")...)
	wants = append(wants, genLog(t, b, logs, live, "23", "2026-11-26T12:00:00Z", "3000")...)
	gzipInPlace(t, oldest)
	oldest += ".gz"
	// Copied files: the live file looks oldest, the oldest backup newest.
	for i, p := range []string{live, older, oldest} {
		mt := time.Date(2026, 12, 1, i, 0, 0, 0, time.UTC)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}

	sink := harness.StartSink(t)
	agg := harness.NewAggregator(t, b, logs, sink.Endpoint)
	agg.Start(t)
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1",
		AuditLog: dir, Aggregator: agg.Listen}
	agent.RunOnce(t, 2*time.Minute)

	_, stderr := agent.Proc.Output()
	if got, want := replayedFiles(t, stderr), []string{oldest, older, live}; !slices.Equal(got, want) {
		t.Errorf("agent replayed %q, want %q (log order)", got, want)
	}
	keys := harness.KeysOf(wants)
	if !sink.WaitFor(60*time.Second, func(r []harness.Record) bool { return harness.CountDistinct(r, keys) == len(keys) }) {
		t.Logf("not all expected alerts arrived within 60s")
	}
	sink.Quiet(4*time.Second, 20*time.Second)
	harness.Report(t, "replay of a directory", harness.Compare(sink.Records(), wants))
}

// TestReplayFilesTextOutput replays two files named on the command line
// (the newer first) into an aggregator without an OTLP endpoint and with
// --output text: one line per alert on its stdout, no JSON.
func TestReplayFilesTextOutput(t *testing.T) {
	b := suite.Need(t)
	if b.GenAuditErr != nil {
		t.Fatalf("sample log generator: %v", b.GenAuditErr)
	}
	logs := harness.LogDir(t)
	dir := t.TempDir()
	backup := filepath.Join(dir, "audit.log.1")
	live := filepath.Join(dir, "audit.log")
	wants := genLog(t, b, logs, backup, "31", "2026-11-26T10:00:00Z", "2000")
	wants = append(wants, genLog(t, b, logs, live, "32", "2026-11-26T11:00:00Z", "2000")...)

	agg := harness.NewAggregator(t, b, logs, "")
	agg.Extra = []string{"--output", "text"}
	agg.Start(t)
	agent := &harness.Agent{Bin: b.Agent, LogDir: logs, Cluster: "c1", Node: "cp-1",
		AuditLog: live, Extra: []string{"--audit-log", backup}, Aggregator: agg.Listen}
	agent.RunOnce(t, 2*time.Minute)

	count := func() (header bool, n int, lines []string) {
		stdout, _ := agg.Proc.Output()
		for _, l := range strings.Split(string(stdout), "\n") {
			f := strings.Fields(l)
			switch {
			case len(f) > 3 && f[0] == "TIME" && f[3] == "KIND":
				header = true
			case len(f) > 3 && f[3] == "token_request":
				n++
				lines = append(lines, l)
			}
		}
		return header, n, lines
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, n, _ := count(); n < len(wants) && time.Now().Before(deadline); _, n, _ = count() {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(4 * time.Second) // duplicates would arrive within the stage grace
	if err := agg.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator graceful stop: %v", err)
	}
	header, n, lines := count()
	if !header || n != len(wants) {
		agg.Proc.Dump(t)
		t.Fatalf("aggregator stdout: header %v, %d token_request lines; want a header and %d", header, n, len(wants))
	}
	stdout, _ := agg.Proc.Output()
	if bytes.Contains(stdout, []byte(`"resourceLogs"`)) {
		t.Errorf("aggregator stdout holds OTLP JSON with --output text")
	}
	for _, w := range wants {
		found := false
		for _, l := range lines {
			if strings.Contains(l, " "+w.Namespace+"/"+w.Name+" ") && strings.Contains(l, w.RequestReceivedTimestamp[:19]) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no text line for %s %s/%s at %s", w.User, w.Namespace, w.Name, w.RequestReceivedTimestamp)
		}
	}
}

// replayedFiles is the file list of the agent's "replaying in log order" log line.
func replayedFiles(t *testing.T, stderr []byte) []string {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(stderr))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l struct {
			Msg   string   `json:"msg"`
			Files []string `json:"files"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "replaying in log order" {
			return l.Files
		}
	}
	t.Fatalf("agent logged no \"replaying in log order\" line")
	return nil
}

// gzipInPlace replaces path by path.gz.
func gzipInPlace(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".gz", buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
