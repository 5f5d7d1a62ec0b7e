package auditpolicy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/auditpolicy"
)

// FuzzPolicy: any bytes either fail to parse with a parse error or give a
// policy whose gaps are described, and whose every token request is
// decided by an existing rule or none.
func FuzzPolicy(f *testing.F) {
	kit, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubeadm", "audit-policy.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kit)
	f.Add([]byte(head + "rules:\n  - level: None\n    users: [\"mallory\"]\n" + tokenwatchRule))
	f.Add([]byte(`{"apiVersion":"audit.k8s.io/v1","kind":"Policy","rules":[{"level":"None"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := auditpolicy.Parse(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parse audit policy: ") {
				t.Fatalf("error %q without its prefix", err)
			}
			return
		}
		gaps := p.Gaps()
		if d := auditpolicy.Describe(gaps); (d == "") != (len(gaps) == 0) {
			t.Fatalf("description %q of %d gaps", d, len(gaps))
		}
		rule, _, _ := p.Decide(auditpolicy.Request{User: "alice", Namespace: "team-a", Name: "default"})
		if rule < -1 || rule >= len(p.Rules) {
			t.Fatalf("rule %d of %d", rule, len(p.Rules))
		}
	})
}
