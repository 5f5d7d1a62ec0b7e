package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunExits(t *testing.T) {
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badCfg, []byte("silence:\n  after: 0s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string // substring
		stderrOne string // substring of the one-line reason
	}{
		{"version", []string{"--version"}, 0, "tokenwatch aggregator", ""},
		{"help lists every flag", []string{"--help"}, 0, "-otlp-endpoint", ""},
		{"no transport security", []string{"--listen", "127.0.0.1:0", "--state-dir", dir}, 2, "", "no transport security"},
		{"insecure on all interfaces", []string{"--insecure", "--listen", ":8443", "--state-dir", dir}, 2, "", "--insecure: refusing plaintext on --listen :8443"},
		{"unknown flag", []string{"--bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{"bad log level", []string{"--log-level", "loud"}, 2, "", "--log-level"},
		{"bad output", []string{"--insecure", "--listen", "127.0.0.1:0", "--state-dir", dir, "--output", "json"}, 2, "", `--output "json": want otlp-json or text`},
		{"stray argument", []string{"alerts.json"}, 2, "", `unexpected argument "alerts.json": every setting is a flag`},
		{"bad config file", []string{"--insecure", "--listen", "127.0.0.1:0", "--state-dir", dir, "--config", badCfg}, 2, "",
			"aggregator: --config: config " + badCfg + ": silence.after: must be > 0"},
		{"missing config file", []string{"--insecure", "--listen", "127.0.0.1:0", "--state-dir", dir, "--config", filepath.Join(dir, "none.yaml")}, 2, "",
			"aggregator: --config: open " + filepath.Join(dir, "none.yaml") + ": no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderrOne) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.stderrOne)
			}
			if tt.code == 2 {
				// Bad flags: exactly one line, the reason.
				if got := stderr.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "aggregator: ") {
					t.Errorf("stderr = %q, want one line starting with \"aggregator: \"", got)
				}
			}
			if tt.code != 0 {
				lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
				last := lines[len(lines)-1]
				if !strings.HasPrefix(last, "aggregator: ") || !strings.Contains(last, tt.stderrOne) {
					t.Errorf("last stderr line = %q, want a one-line reason containing %q", last, tt.stderrOne)
				}
			}
		})
	}
}

// TestVersion: --version names the version, the commit and the Go version.
func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--version"}, &stdout, &stderr)
	want := regexp.MustCompile(`^tokenwatch aggregator \S+ \(commit \S+, go\S+\)\n$`)
	if code != 0 || !want.MatchString(stdout.String()) || stderr.Len() != 0 {
		t.Errorf("--version = %d, stdout %q, stderr %q; want 0 and one line matching %s", code, stdout.String(), stderr.String(), want)
	}
}

// TestRunStops runs the real server and stops it as SIGTERM would.
func TestRunStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // already stopped: Run starts, serves and shuts down at once
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"--insecure", "--listen", "127.0.0.1:0", "--state-dir", t.TempDir()}, &stdout, &stderr)
	if code != 0 {
		t.Errorf("exit code = %d, want 0; stderr %q", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "OTLP JSON") {
		t.Errorf("stderr = %q, want the warning that alerts go to stdout as OTLP JSON", stderr.String())
	}
}
