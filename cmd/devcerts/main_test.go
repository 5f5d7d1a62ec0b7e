package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "certs")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-out", out, "-clusters", "a, b", "-hosts", "aggregator.example,10.0.0.1"}, &stdout, &stderr); code != 0 {
		t.Fatalf("run = %d, stderr %q", code, stderr.String())
	}
	for _, f := range []string{"ca.crt", "server.crt", "server.key", "agent-a.crt", "agent-a.key", "agent-b.crt", "agent-b.key"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	if !strings.Contains(stdout.String(), "spiffe://tokenwatch/cluster/b") {
		t.Errorf("stdout %q does not name agent b's SPIFFE ID", stdout.String())
	}
}

func TestRunRejects(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no out", []string{"-clusters", "a"}, "-out is required"},
		{"bad cluster", []string{"-out", dir, "-clusters", "a/b"}, "-clusters"},
		{"duplicate cluster", []string{"-out", dir, "-clusters", "a,a"}, "given twice"},
		{"bad trust domain", []string{"-out", dir, "-trust-domain", "Upper"}, "-trust-domain"},
		{"no hosts", []string{"-out", dir, "-hosts", ","}, "-hosts"},
		{"extra args", []string{"-out", dir, "x"}, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != 2 {
				t.Errorf("run(%q) = %d, want 2", tt.args, code)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("run(%q) stderr = %q, want it to mention %q", tt.args, stderr.String(), tt.want)
			}
		})
	}
}
