package detect

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// archive holds the live audit.log and 7 backups of a real kube-apiserver
// v1.35.4 (rotated at --audit-log-maxsize=1; serviceaccounts/token logged at
// Request level). See testdata/README.md.
const archive = "testdata/kube-apiserver-v1.35.4-audit-logs.tgz"

// logLines returns the archive's lines in write order: backups by their
// rotation time (in the name), then the live file.
func logLines(t *testing.T) [][]byte {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(h.Name)] = b
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { // audit.log sorts after audit-<time>.log
		return strings.Replace(names[i], "audit.log", "audit~", 1) < strings.Replace(names[j], "audit.log", "audit~", 1)
	})
	if len(names) != 8 || names[7] != "audit.log" {
		t.Fatalf("archive files %v", names)
	}
	var lines [][]byte
	for _, n := range names {
		sc := bufio.NewScanner(bytes.NewReader(files[n]))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			lines = append(lines, bytes.Clone(sc.Bytes()))
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return lines
}

// summary is the first line of a golden file: what the run saw.
type summary struct {
	Config       string         `json:"config"`
	Lines        int            `json:"lines"`
	TokenCreates int            `json:"token_create_events"`
	Requests     int            `json:"token_create_requests"`
	ExcludedBy   map[string]int `json:"excluded_events_by"`
	Mismatches   int            `json:"mismatch_records"`
	Records      int            `json:"records"`
	Alone        int            `json:"alone_records"`
	Late         int            `json:"late_completions"`
}

func TestGoldenRealLogs(t *testing.T) {
	lines := logLines(t)
	configs := []struct {
		name string
		cfg  rule.Config
	}{
		{"default", rule.DefaultConfig()},
		{"seed", rule.Config{StrictGroups: false, Platform: rule.PlatformAny}},
	}
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			r := newRun(t, c.cfg)
			s := summary{Config: c.name, Lines: len(lines), ExcludedBy: map[string]int{}}
			requests := map[Key]bool{}
			for i, line := range lines {
				e, err := audit.Decode(line)
				if err != nil {
					t.Fatalf("line %d: %v", i+1, err)
				}
				if !e.IsTokenCreate() {
					continue
				}
				s.TokenCreates++
				requests[KeyOf(r.src, e)] = true
				if v := r.rule.Evaluate(e); v.Excluded {
					s.ExcludedBy[v.By]++
				}
				r.feed(e)
			}
			r.expire()
			s.Requests, s.Records, s.Late = len(requests), len(r.records), r.late
			var out bytes.Buffer
			for _, rec := range r.records {
				if _, ok := rec.Attr("tokenwatch.exclusion.mismatch"); ok {
					s.Mismatches++
				}
				if v, _ := rec.Attr("event.outcome"); v.Str == OutcomeUnknown {
					s.Alone++
				}
			}
			b, _ := json.Marshal(s)
			out.Write(b)
			out.WriteByte('\n')
			for _, rec := range r.records {
				b, err := json.Marshal(rec)
				if err != nil {
					t.Fatal(err)
				}
				out.Write(b)
				out.WriteByte('\n')
			}
			if jwt.Match(out.Bytes()) {
				t.Errorf("a JWT-shaped string is in the records")
			}
			golden(t, "testdata/golden-"+c.name+".jsonl", out.Bytes())
		})
	}
}

// TestRealLogsVariants: the same logs re-encoded (keys sorted, no HTML
// escaping) or logged at RequestResponse level (the minted token in
// responseObject) give exactly the same records, and the token appears in
// none of them.
func TestRealLogsVariants(t *testing.T) {
	const token = "eyJhbGciOiJSUzI1NiIsImtpZCI6InR3In0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbS1hOmFwcCJ9.c2lnbmF0dXJlLW5vdC1yZWFs"
	lines := logLines(t)
	records := func(lines [][]byte) []byte {
		r := newRun(t, rule.DefaultConfig())
		for i, line := range lines {
			e, err := audit.Decode(line)
			if err != nil {
				t.Fatalf("line %d: %v", i+1, err)
			}
			r.feed(e)
		}
		r.expire()
		b, err := json.Marshal(r.records)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := records(lines)
	reencoded := make([][]byte, len(lines))
	withToken := make([][]byte, len(lines))
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
		reencoded[i] = buf.Bytes()
		if ref, _ := m["objectRef"].(map[string]any); ref["subresource"] == "token" && m["stage"] == "ResponseComplete" {
			m["responseObject"] = map[string]any{"kind": "TokenRequest", "status": map[string]any{"token": token, "expirationTimestamp": "2026-11-27T00:09:13Z"}}
			m["level"] = "RequestResponse"
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		withToken[i] = b
	}
	if !bytes.Contains(bytes.Join(withToken, nil), []byte(token)) {
		t.Fatal("the token was not injected: the test would prove nothing")
	}
	for _, v := range []struct {
		name  string
		lines [][]byte
	}{{"reencoded", reencoded}, {"RequestResponse", withToken}} {
		got := records(v.lines)
		if !bytes.Equal(want, got) {
			t.Errorf("%s: records differ from the original logs'", v.name)
		}
		if bytes.Contains(got, []byte(token)) || bytes.Contains(got, []byte("c2lnbmF0dXJl")) {
			t.Errorf("%s: the minted token is in the records", v.name)
		}
	}
}

// jwt matches a JWS compact serialization (a minted token).
var jwt = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.`)

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(strings.Split(string(want), "\n"), strings.Split(string(got), "\n")); diff != "" {
		t.Errorf("%s differs (-want +got; -update rewrites it):\n%s", path, diff)
	}
}
