package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFormatWatch: the verdict follows the newest complete line; a torn
// line, an empty or absent file and a line longer than the window leave
// it; each change is logged once, and no line is quoted.
func TestFormatWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	const jsonLine = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete"}` + "\n"
	const legacyLine = `2026-12-08T01:57:09.106841886Z AUDIT: id="a2" stage="ResponseComplete" ip="10.0.0.7" method="create" user="mallory" uri="/api/v1/namespaces/kube-system/serviceaccounts/admin/token" response="201"` + "\n"
	var logs bytes.Buffer
	w := newFormatWatch(path, slog.New(slog.NewTextHandler(&logs, nil)))
	steps := []struct {
		name, write string // appended; "-" removes the file
		want        string // prefix of the verdict, "" for none
		logged      string // substring of the new log line, "" for none
	}{
		{"absent", "", "", ""},
		{"json", jsonLine, "", ""},
		{"legacy appended (an apiserver restarted with the flag)", legacyLine, legacyFault, "not in the JSON format"},
		{"a torn json line after it: the legacy line decides", `{"kind":"Ev`, legacyFault, ""},
		{"the torn line completed", `ent"}` + "\n", "", "JSON format again"},
		{"another format", "<xml/>\n", "its newest line is not a JSON audit event", "not in the JSON format"},
		{"a line longer than the window: the verdict stands", "{" + strings.Repeat("x", formatWindow+10) + "\n", "its newest line is not a JSON audit event", ""},
		{"removed: the verdict stands", "-", "its newest line is not a JSON audit event", ""},
		{"recreated with legacy lines", legacyLine, legacyFault, "not in the JSON format"},
	}
	for _, s := range steps {
		switch s.write {
		case "":
		case "-":
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		default:
			f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(s.write); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		before := logs.Len()
		got := w.check()
		if !strings.HasPrefix(got, s.want) || (s.want == "") != (got == "") {
			t.Errorf("%s: check() = %q, want %q", s.name, got, s.want)
		}
		line := logs.String()[before:]
		if s.logged == "" && line != "" || !strings.Contains(line, s.logged) || strings.Count(line, "\n") > 1 {
			t.Errorf("%s: logged %q, want one line with %q", s.name, line, s.logged)
		}
	}
	if strings.Contains(logs.String(), "mallory") || strings.Contains(logs.String(), "xml") {
		t.Errorf("the log quotes audit lines: %q", logs.String())
	}
	var none *formatWatch // --once
	if got := none.check(); got != "" {
		t.Errorf("nil watch: %q", got)
	}
}
