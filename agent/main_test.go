package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestFlagErrors(t *testing.T) {
	base := []string{"--cluster", "prod", "--node-name", "cp-1", "--aggregator", "127.0.0.1:7443", "--insecure"}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no cluster", []string{"--aggregator", "127.0.0.1:1", "--insecure"}, "agent: --cluster is required"},
		{"no aggregator", []string{"--cluster", "prod", "--insecure"}, "agent: --aggregator HOST:PORT is required"},
		{"aggregator without port", []string{"--cluster", "prod", "--aggregator", "agg", "--insecure"}, `agent: --aggregator "agg": want HOST:PORT`},
		{"no transport security", []string{"--cluster", "prod", "--aggregator", "agg.example:7443"},
			"agent: no transport security: give --tls-cert, --tls-key and --tls-ca for mTLS, or --insecure for an aggregator on loopback"},
		{"insecure off loopback", []string{"--cluster", "prod", "--aggregator", "10.0.0.1:7443", "--insecure"},
			`agent: --insecure is for loopback only: --aggregator: address "10.0.0.1:7443" is not a loopback address (want 127.0.0.0/8, ::1 or localhost)`},
		{"insecure with tls", with("--tls-ca", "ca.pem"), "agent: --insecure cannot be combined with --tls-cert, --tls-key or --tls-ca"},
		{"tls without key", []string{"--cluster", "prod", "--aggregator", "agg:7443", "--tls-cert", "a.pem", "--tls-ca", "ca.pem"},
			"agent: --tls-key is required with --tls-cert and --tls-ca"},
		{"bad start-at", with("--start-at", "middle"), `agent: --start-at "middle": want "beginning" or "end"`},
		{"gz without once", with("--audit-log", "/x/audit.log.gz"), "agent: --audit-log /x/audit.log.gz: a compressed file can only be replayed with --once"},
		{"bad once-timeout", with("--once", "--once-timeout", "0s"), "agent: --once-timeout 0s: must be positive"},
		{"bad metrics-addr", with("--metrics-addr", "localhost"), `agent: --metrics-addr "localhost": want HOST:PORT`},
		{"audit policy with --once", with("--once", "--audit-policy-file", "/etc/kubernetes/audit-policy.yaml"), "agent: --audit-policy-file: watched only while following, not with --once"},
		{"several files without --once", with("--audit-log", "a.log", "--audit-log", "b.log"), "agent: --audit-log given 2 times: several files are replayed only with --once"},
		{"several files with a checkpoint", with("--once", "--audit-log", "a.log", "--audit-log", "b.log", "--state-dir", "st"), "agent: --state-dir: a checkpoint follows one file: replay several --audit-log files without it"},
		{"stray argument", with("audit.log"), `agent: unexpected argument "audit.log": every setting is a flag`},
		{"unknown flag", with("--nope"), "agent: flag provided but not defined: -nope (see --help)"},
		{"bad flag value", with("--once-timeout", "soon"), `agent: invalid value "soon" for flag -once-timeout: parse error (see --help)`},
		// --once: the old code, which did not check, ends soon too.
		{"bad node name", with("--once", "--once-timeout", "1s", "--node-name", "cp 1"),
			`agent: --node-name "cp 1" (default $NODE_NAME, else the hostname): character ' ' not allowed (want 1 to 253 of A-Z a-z 0-9 . _ -)`},
		{"long node name", with("--once", "--once-timeout", "1s", "--node-name", strings.Repeat("n", 254)),
			`agent: --node-name "` + strings.Repeat("n", 64) + `" (default $NODE_NAME, else the hostname): node name of 254 bytes: at most 253 allowed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			if got := stderr.String(); got != tt.want+"\n" {
				t.Errorf("run(%q) printed %q, want the one line %q", tt.args, got, tt.want)
			}
			if code != 2 {
				t.Errorf("run(%q) = %d, want 2", tt.args, code)
			}
		})
	}
}

// TestNodeNameFromEnvironment: the default node name ($NODE_NAME) is held
// to the aggregator's rule too, and the one line names the flag.
func TestNodeNameFromEnvironment(t *testing.T) {
	t.Setenv("NODE_NAME", "cp-1/evil")
	var stdout, stderr bytes.Buffer
	code := run([]string{"--cluster", "prod", "--aggregator", "127.0.0.1:7443", "--insecure", "--once", "--once-timeout", "1s"}, &stdout, &stderr)
	want := `agent: --node-name "cp-1/evil" (default $NODE_NAME, else the hostname): character '/' not allowed (want 1 to 253 of A-Z a-z 0-9 . _ -)` + "\n"
	if code != 2 || stderr.String() != want {
		t.Errorf("run with NODE_NAME=cp-1/evil = %d, %q; want 2, %q", code, stderr.String(), want)
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("--help exit code %d", code)
	}
	if stderr.Len() != 0 {
		t.Errorf("--help printed %q on stderr, want the usage on stdout", stderr.String())
	}
	for _, f := range []string{"audit-log", "cluster", "node-name", "aggregator", "insecure", "tls-cert", "tls-key", "tls-ca",
		"state-dir", "start-at", "once", "once-timeout", "metrics-addr", "log-level", "version", "audit-policy-file", "check-audit-policy"} {
		if !strings.Contains(stdout.String(), "-"+f+" ") && !strings.Contains(stdout.String(), "-"+f+"\n") {
			t.Errorf("--help does not list --%s", f)
		}
	}
}

func TestOnceDefaults(t *testing.T) {
	c, _, _, err := parseFlags([]string{"--once"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.StartAt != "beginning" || c.StateDir != "" {
		t.Errorf("--once: start-at %q, state-dir %q; want beginning and none", c.StartAt, c.StateDir)
	}
	c, _, _, err = parseFlags([]string{"--once", "--state-dir", "/s", "--start-at", "end"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.StartAt != "end" || c.StateDir != "/s" {
		t.Errorf("--once with explicit flags: start-at %q, state-dir %q; want end and /s", c.StartAt, c.StateDir)
	}
	c, _, _, err = parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.StartAt != "end" || c.StateDir != "/var/lib/tokenwatch" || c.AuditLog != "/var/log/kubernetes/audit/audit.log" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"--version"}, &stdout, &stderr)
	want := regexp.MustCompile(`^tokenwatch agent \S+ \(commit \S+, go\S+\)\n$`)
	if code != 0 || !want.MatchString(stdout.String()) || stderr.Len() != 0 {
		t.Errorf("--version = %d, stdout %q, stderr %q; want 0 and one line matching %s", code, stdout.String(), stderr.String(), want)
	}
}

// TestCheckAuditPolicy: --check-audit-policy reads a policy without
// running the agent (no --cluster or --aggregator needed), lists what it
// hides, and says so in its exit code.
func TestCheckAuditPolicy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	kit := filepath.Join("..", "deploy", "kubeadm", "audit-policy.yaml")
	hides := write("hides.yaml", "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: None\n    namespaces: [\"kube-system\"]\n  - level: Metadata\n")
	tests := []struct {
		name         string
		path         string
		code         int
		stdout, errs string
	}{
		{"the kit's", kit, 0, "every token request is logged", ""},
		{"one that hides kube-system", hides, 1, "  rule 1 (level None) hides token requests in namespaces kube-system\n", ""},
		{"one that logs tokens", write("leaks.yaml", "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: RequestResponse\n"), 1,
			"writes minted tokens into the audit log in clear text:\n  rule 1 (level RequestResponse) writes the minted token of every token request into the audit log\n", ""},
		{"not a policy", write("cm.yaml", "kind: ConfigMap\n"), 2, "", "agent: check audit policy " + dir},
		{"absent", filepath.Join(dir, "none.yaml"), 2, "", "agent: check audit policy: open "},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run([]string{"--check-audit-policy", tt.path}, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || (tt.stdout == "") != (stdout.Len() == 0) ||
			!strings.HasPrefix(stderr.String(), tt.errs) || (tt.errs == "") != (stderr.Len() == 0) || strings.Count(stderr.String(), "\n") > 1 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d, stdout with %q, stderr starting %q",
				tt.name, code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.errs)
		}
	}
}
