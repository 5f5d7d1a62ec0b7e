package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/collector/pdata/plog"
)

// ResponseTokens returns every responseObject.status.token in an audit log
// (RequestResponse-level TokenRequests), to search for downstream.
func ResponseTokens(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	var toks []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if !bytes.Contains(sc.Bytes(), []byte(`"token"`)) {
			continue
		}
		var ev struct {
			ResponseObject struct {
				Status struct {
					Token string `json:"token"`
				} `json:"status"`
			} `json:"responseObject"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.ResponseObject.Status.Token != "" {
			toks = append(toks, ev.ResponseObject.Status.Token)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scan %s: %v", path, err)
	}
	return toks
}

// Leak is where a secret was found.
type Leak struct{ Where, Secret string }

// FindLeaks searches OTLP payloads, process output files and every file
// under dirs for any of secrets (and for a 24-byte prefix of each, which
// catches truncated copies).
func FindLeaks(t testing.TB, secrets []string, payloads []plog.Logs, procs []*Proc, dirs ...string) []Leak {
	t.Helper()
	var leaks []Leak
	needles := map[string]string{}
	for _, s := range secrets {
		needles[s] = s
		if len(s) > 24 {
			needles[s[:24]] = s
		}
	}
	search := func(where string, b []byte) {
		for n, s := range needles {
			if bytes.Contains(b, []byte(n)) {
				leaks = append(leaks, Leak{where, s})
			}
		}
	}
	var m plog.JSONMarshaler
	for i, p := range payloads {
		b, err := m.MarshalLogs(p)
		if err != nil {
			t.Fatalf("marshal payload: %v", err)
		}
		search("OTLP payload "+itoa(i), b)
	}
	for _, p := range procs {
		out, errOut := p.Output()
		search(p.Stdout, out)
		search(p.Stderr, errOut)
	}
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err == nil {
				search(path, b)
			}
			return nil
		})
	}
	return leaks
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }
