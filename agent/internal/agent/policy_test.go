package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwatch/tokenwatch/agent/internal/metrics"
)

// TestPolicyWatch: each check digests the file as it is now, says why it
// cannot, and logs each change of what it finds once.
func TestPolicyWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit-policy.yaml")
	digest := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	var logs bytes.Buffer
	w := newPolicyWatch(path, slog.New(slog.NewTextHandler(&logs, nil)))
	steps := []struct {
		name     string
		do       func() error
		sum      string
		fault    string // substring
		logged   string // substring of the new log line, "" for none
		notLines int    // log lines expected in all so far
	}{
		{"absent", func() error { return nil }, "", "no such file", "audit policy file not readable", 1},
		{"still absent: logged once", func() error { return nil }, "", "no such file", "", 1},
		{"written", func() error { return os.WriteFile(path, []byte("rules: []\n"), 0o600) }, digest("rules: []\n"), "", "readable again", 2},
		{"same", func() error { return nil }, digest("rules: []\n"), "", "", 2},
		{"edited", func() error { return os.WriteFile(path, []byte("rules: [x]\n"), 0o600) }, digest("rules: [x]\n"), "", "audit policy file changed", 3},
		{"replaced by a directory", func() error {
			if err := os.Remove(path); err != nil {
				return err
			}
			return os.Mkdir(path, 0o700)
		}, "", "not a regular file", "audit policy file not readable", 4},
		{"too large", func() error {
			if err := os.Remove(path); err != nil {
				return err
			}
			return os.WriteFile(path, bytes.Repeat([]byte("#"), maxPolicyBytes+1), 0o600)
		}, "", "larger than 4 MiB", "audit policy file not readable", 5},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		before := logs.Len()
		sum, fault, _ := w.check()
		if sum != s.sum || (s.fault == "") != (fault == "") || !strings.Contains(fault, s.fault) {
			t.Errorf("%s: check() = %q, %q; want %q, an error with %q", s.name, sum, fault, s.sum, s.fault)
		}
		line := logs.String()[before:]
		if s.logged == "" && line != "" || !strings.Contains(line, s.logged) {
			t.Errorf("%s: logged %q, want a line with %q", s.name, line, s.logged)
		}
		if n := strings.Count(logs.String(), "\n"); n != s.notLines {
			t.Errorf("%s: %d log lines so far, want %d", s.name, n, s.notLines)
		}
	}
	if newPolicyWatch("", nil) != nil {
		t.Error("newPolicyWatch(\"\") is not nil: an unset flag must watch nothing")
	}
}

// TestPolicyWatchFirstRead: a file readable from the start is logged as
// watched, with its digest.
func TestPolicyWatchFirstRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: audit.k8s.io/v1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	w := newPolicyWatch(path, slog.New(slog.NewTextHandler(&logs, nil)))
	if sum, fault, _ := w.check(); len(sum) != 64 || fault != "" {
		t.Fatalf("check() = %q, %q", sum, fault)
	}
	if !strings.Contains(logs.String(), "audit policy file watched") {
		t.Errorf("log = %q, want the file watched", logs.String())
	}
}

// TestPolicyWatchGaps: the watch says which token requests the policy keeps
// out of the audit log, and warns of them with the line that logs the
// file's change.
func TestPolicyWatchGaps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	const head = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n"
	const tokenwatchRule = "  - level: Request\n    verbs: [\"create\"]\n    resources:\n      - group: \"\"\n        resources: [\"serviceaccounts/token\"]\n"
	var logs bytes.Buffer
	w := newPolicyWatch(path, slog.New(slog.NewTextHandler(&logs, nil)))
	steps := []struct {
		name, policy, gaps, line, state string
	}{
		{"logs them all", head + tokenwatchRule, "", "level=INFO msg=\"audit policy file watched\"", metrics.PolicyLogged},
		{"hides one user", head + "  - level: None\n    users: [\"mallory\"]\n" + tokenwatchRule,
			"rule 1 (level None) hides token requests by users mallory",
			"level=WARN msg=\"audit policy file changed\"", metrics.PolicyHides},
		{"not a policy", "rules: [x]\n", "not an audit policy tokenwatch can read (parse audit policy: ",
			"token_requests_unlogged=\"not an audit policy", metrics.PolicyHides},
	}
	for _, s := range steps {
		if err := os.WriteFile(path, []byte(s.policy), 0o600); err != nil {
			t.Fatal(err)
		}
		before := logs.Len()
		_, fault, gaps := w.check()
		if fault != "" || !strings.HasPrefix(gaps, s.gaps) || (s.gaps == "") != (gaps == "") {
			t.Errorf("%s: check() gaps %q, fault %q; want gaps %q", s.name, gaps, fault, s.gaps)
		}
		if line := logs.String()[before:]; !strings.Contains(line, s.line) || strings.Count(line, "\n") != 1 {
			t.Errorf("%s: logged %q, want one line with %q", s.name, line, s.line)
		}
		if _, _, again := w.check(); again != gaps {
			t.Errorf("%s: second check gaps %q, want %q", s.name, again, gaps)
		}
		if got := w.state(); got != s.state {
			t.Errorf("%s: state %q, want %q", s.name, got, s.state)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := w.state(); got != metrics.PolicyUnread {
		t.Errorf("removed: state %q, want %q", got, metrics.PolicyUnread)
	}
	if !strings.Contains(logs.String(), `token_requests_unlogged="rule 1 (level None) hides token requests by users mallory"`) {
		t.Errorf("log = %q, want the gap named", logs.String())
	}
}

// TestPolicyWatchLeaks: a policy that logs token requests with their
// response is warned of once per content, naming the rule.
func TestPolicyWatchLeaks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: RequestResponse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	w := newPolicyWatch(path, slog.New(slog.NewTextHandler(&logs, nil)))
	w.check()
	w.check()
	const want = `msg="audit policy writes minted tokens into the audit log in clear text; keep token requests at level Request"`
	if n := strings.Count(logs.String(), want); n != 1 || !strings.Contains(logs.String(), "rule 1 (level RequestResponse) writes the minted token of every token request") {
		t.Errorf("log %q: want the leak named once", logs.String())
	}
}
