package auditpolicy_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/auditpolicy"
	"github.com/tokenwatch/tokenwatch/internal/auditpolicy/auditpolicytest"
)

const head = "apiVersion: audit.k8s.io/v1\nkind: Policy\n"

// tokenwatchRule is the kit's first rule.
const tokenwatchRule = "  - level: Request\n    verbs: [\"create\"]\n    resources:\n      - group: \"\"\n        resources: [\"serviceaccounts/token\"]\n"

func mustParse(t testing.TB, s string) *auditpolicy.Policy {
	t.Helper()
	p, err := auditpolicy.Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestKitPolicyHasNoGap(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubeadm", "audit-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := auditpolicy.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if g := p.Gaps(); g != nil {
		t.Errorf("the kit's policy has gaps: %s", auditpolicy.Describe(g))
	}
}

func TestGaps(t *testing.T) {
	tests := []struct {
		name, rules, want string
	}{
		{"tokenwatch rule first", tokenwatchRule + "  - level: None\n", ""},
		{"catch-all Metadata", "  - level: Metadata\n", ""},
		{"no rule for them", "  - level: Metadata\n    resources:\n      - group: \"\"\n        resources: [\"pods\"]\n",
			"token requests no rule matches are not logged (level None)"},
		{"one user hidden above", "  - level: None\n    users: [\"mallory\"]\n" + tokenwatchRule,
			"rule 1 (level None) hides token requests by users mallory"},
		{"a namespace hidden", "  - level: None\n    namespaces: [\"kube-system\"]\n" + tokenwatchRule,
			"rule 1 (level None) hides token requests in namespaces kube-system"},
		{"one service account, one group", "  - level: None\n    userGroups: [\"ops\"]\n    resources:\n      - group: \"\"\n        resources: [\"serviceaccounts/*\"]\n        resourceNames: [\"admin\"]\n" + tokenwatchRule,
			"rule 1 (level None) hides token requests by groups ops for service accounts named admin"},
		{"everything None first", "  - level: None\n" + tokenwatchRule, "rule 1 (level None) hides every token request"},
		{"*/token", "  - level: None\n    resources:\n      - group: \"\"\n        resources: [\"*/token\"]\n" + tokenwatchRule,
			"rule 1 (level None) hides every token request"},
		{"both stages omitted", "  - level: Request\n    omitStages: [\"RequestReceived\", \"ResponseComplete\"]\n",
			"rule 1 (both stages omitted) hides every token request"},
		{"rules that cannot match token requests", "  - level: None\n    verbs: [\"get\", \"watch\"]\n" +
			"  - level: None\n    nonResourceURLs: [\"/healthz*\"]\n" +
			"  - level: None\n    resources:\n      - group: \"apps\"\n      - group: \"\"\n        resources: [\"serviceaccounts\", \"secrets\"]\n" +
			tokenwatchRule, ""},
		{"the core group without a list", "  - level: None\n    resources:\n      - group: \"\"\n" + tokenwatchRule,
			"rule 1 (level None) hides every token request"},
		{"two gaps, then the default", "  - level: None\n    users: [\"a\"]\n  - level: Request\n    users: [\"b\"]\n  - level: None\n    namespaces: [\"x\", \"y\"]\n",
			"rule 1 (level None) hides token requests by users a; rule 3 (level None) hides token requests in namespaces x, y; token requests no rule matches are not logged (level None)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := auditpolicy.Describe(mustParse(t, head+"rules:\n"+tt.rules).Gaps()); got != tt.want {
				t.Errorf("gaps = %q\nwant   %q", got, tt.want)
			}
		})
	}
	// A policy-wide omitStages counts with the rule's.
	p := mustParse(t, head+"omitStages: [\"RequestReceived\"]\nrules:\n  - level: Request\n    omitStages: [\"ResponseComplete\"]\n")
	if got, want := auditpolicy.Describe(p.Gaps()), "rule 1 (both stages omitted) hides every token request"; got != want {
		t.Errorf("gaps = %q, want %q", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	for name, in := range map[string]string{
		"not YAML":     "{{{",
		"another kind": "apiVersion: v1\nkind: ConfigMap\n",
		"no rules":     head + "rules: []\n",
		"empty":        "",
	} {
		if _, err := auditpolicy.Parse([]byte(in)); err == nil || !strings.HasPrefix(err.Error(), "parse audit policy: ") {
			t.Errorf("%s: err = %v, want a parse audit policy error", name, err)
		}
	}
	// JSON is YAML.
	p := mustParse(t, `{"apiVersion":"audit.k8s.io/v1","kind":"Policy","rules":[{"level":"None","users":["m"]}]}`)
	if p.Rules[0].Users[0] != "m" {
		t.Errorf("JSON policy read as %+v", p)
	}
}

// TestGapsCoverDecide: on random policies, every request Decide hides is
// covered by a gap, and every one it logs with its token by a leak.
func TestGapsCoverDecide(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		p := mustParse(t, string(auditpolicytest.Policy(rng)))
		gaps := p.Gaps()
		for _, q := range auditpolicytest.Probes() {
			_, level, omit := p.Decide(q)
			if !auditpolicy.Hidden(level, omit) {
				continue
			}
			if !slices.ContainsFunc(gaps, func(g auditpolicy.Gap) bool { return g.Covers(q) }) {
				t.Fatalf("request %+v hidden by %+v, not covered by gaps %q", q, p, auditpolicy.Describe(gaps))
			}
		}
		leaks := p.Leaks()
		for _, q := range auditpolicytest.Probes() {
			_, level, omit := p.Decide(q)
			if auditpolicy.Leaked(level, omit) && !slices.ContainsFunc(leaks, func(g auditpolicy.Gap) bool { return g.Covers(q) }) {
				t.Fatalf("request %+v logged with its token by %+v, not covered by leaks %q", q, p, auditpolicy.Describe(leaks))
			}
		}
	}
}

func TestLeaks(t *testing.T) {
	tests := []struct {
		name, rules, want string
	}{
		{"tokenwatch rule first", tokenwatchRule + "  - level: RequestResponse\n", ""},
		{"everything at RequestResponse", "  - level: RequestResponse\n",
			"rule 1 (level RequestResponse) writes the minted token of every token request into the audit log"},
		{"for one group, then the kit's rule", "  - level: RequestResponse\n    userGroups: [\"ops\"]\n" + tokenwatchRule,
			"rule 1 (level RequestResponse) writes the minted token of token requests by groups ops into the audit log"},
		{"the response stage omitted", "  - level: RequestResponse\n    omitStages: [\"ResponseComplete\"]\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := auditpolicy.Describe(mustParse(t, head+"rules:\n"+tt.rules).Leaks()); got != tt.want {
				t.Errorf("leaks = %q\nwant    %q", got, tt.want)
			}
		})
	}
}
