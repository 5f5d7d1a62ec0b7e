package check

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	auditinternal "k8s.io/apiserver/pkg/apis/audit"
	"k8s.io/apiserver/pkg/audit"
	"k8s.io/apiserver/pkg/audit/policy"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// TestAuditPolicyMerge holds deploy/FLEET.md's merge guidance to the
// apiserver's own loader and evaluator: the tokenwatch rule first keeps a
// TokenRequest at Request whatever follows; each kind of rule the page names
// takes the event away when it comes first; a policy-wide omitStages drops
// the RequestReceived stage of the tokenwatch rule too.
func TestAuditPolicyMerge(t *testing.T) {
	const tokenwatchRule = `
  - level: Request
    verbs: ["create"]
    resources:
      - group: ""
        resources: ["serviceaccounts/token"]
`
	earlier := map[string]string{
		"no resources":         "  - level: Metadata\n",
		"core group, no list":  "  - level: None\n    resources:\n      - group: \"\"\n",
		"star":                 "  - level: Metadata\n    resources:\n      - group: \"\"\n        resources: [\"*\"]\n",
		"star/token":           "  - level: None\n    resources:\n      - group: \"\"\n        resources: [\"*/token\"]\n",
		"serviceaccounts/star": "  - level: Metadata\n    resources:\n      - group: \"\"\n        resources: [\"serviceaccounts/*\"]\n",
		"RequestResponse all":  "  - level: RequestResponse\n",
	}
	attrs := authorizer.AttributesRecord{
		User: &user.DefaultInfo{Name: "alice", Groups: []string{"system:authenticated"}}, Verb: "create",
		Namespace: "team-a", APIVersion: "v1", Resource: "serviceaccounts", Subresource: "token",
		Name: "default", ResourceRequest: true, Path: "/api/v1/namespaces/team-a/serviceaccounts/default/token",
	}
	evaluate := func(t *testing.T, prelude, rules string) audit.RequestAuditConfig {
		t.Helper()
		path := filepath.Join(t.TempDir(), "policy.yaml")
		doc := "apiVersion: audit.k8s.io/v1\nkind: Policy\n" + prelude + "rules:\n" + rules
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := policy.LoadPolicyFromFile(path)
		if err != nil {
			t.Fatalf("load %s: %v", doc, err)
		}
		return policy.NewPolicyRuleEvaluator(p).EvaluatePolicyRule(attrs)
	}
	for _, name := range sortedKeys(earlier) {
		rule := earlier[name]
		t.Run(name, func(t *testing.T) {
			if got := evaluate(t, "", tokenwatchRule+rule); got.Level != auditinternal.LevelRequest ||
				slices.Contains(got.OmitStages, auditinternal.StageRequestReceived) {
				t.Errorf("tokenwatch rule first: level %s, omitStages %v, want Request with both stages", got.Level, got.OmitStages)
			}
			if got := evaluate(t, "", rule+tokenwatchRule); got.Level == auditinternal.LevelRequest {
				t.Errorf("%q before the tokenwatch rule: level %s, want it to decide (the page says it takes the event)", rule, got.Level)
			}
		})
	}
	t.Run("policy-wide omitStages", func(t *testing.T) {
		got := evaluate(t, "omitStages: [\"RequestReceived\"]\n", tokenwatchRule)
		if got.Level != auditinternal.LevelRequest || !slices.Contains(got.OmitStages, auditinternal.StageRequestReceived) {
			t.Errorf("level %s, omitStages %v, want Request without RequestReceived", got.Level, got.OmitStages)
		}
	})
}
