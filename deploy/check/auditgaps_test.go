package check

import (
	"math/rand/v2"
	"slices"
	"testing"

	auditinternal "k8s.io/apiserver/pkg/apis/audit"
	"k8s.io/apiserver/pkg/audit/policy"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"

	"github.com/tokenwatch/tokenwatch/internal/auditpolicy"
	"github.com/tokenwatch/tokenwatch/internal/auditpolicy/auditpolicytest"
)

// TestAuditPolicyGapsAgreeWithAPIServer holds the agent's reading of audit
// policies (internal/auditpolicy, behind --audit-policy-file) to the
// apiserver's own loader and evaluator: on random valid policies, every
// token request gets the same level and omitted stages, every one left
// unlogged is covered by a gap the agent reports, and every one logged with
// its response (the minted token) by a leak it reports.
func TestAuditPolicyGapsAgreeWithAPIServer(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 13))
	loaded := 0
	for range 3000 {
		data := auditpolicytest.Policy(rng)
		want, err := policy.LoadPolicyFromBytes(data)
		if err != nil {
			continue // a random policy the apiserver refuses: it would not start
		}
		loaded++
		got, err := auditpolicy.Parse(data)
		if err != nil {
			t.Fatalf("the apiserver loads a policy tokenwatch cannot parse (%v):\n%s", err, data)
		}
		ev := policy.NewPolicyRuleEvaluator(want)
		gaps, leaks := got.Gaps(), got.Leaks()
		for _, q := range auditpolicytest.Probes() {
			cfg := ev.EvaluatePolicyRule(authorizer.AttributesRecord{
				User: &user.DefaultInfo{Name: q.User, Groups: q.Groups}, Verb: "create",
				Namespace: q.Namespace, APIGroup: "", APIVersion: "v1", Resource: "serviceaccounts",
				Subresource: "token", Name: q.Name, ResourceRequest: true,
				Path: "/api/v1/namespaces/" + q.Namespace + "/serviceaccounts/" + q.Name + "/token",
			})
			_, level, omit := got.Decide(q)
			wantOmit := make([]string, len(cfg.OmitStages))
			for i, s := range cfg.OmitStages {
				wantOmit[i] = string(s)
			}
			slices.Sort(wantOmit)
			slices.Sort(omit)
			if level != string(cfg.Level) || !slices.Equal(omit, wantOmit) {
				t.Fatalf("request %+v: tokenwatch decides %s omitting %v, the apiserver %s omitting %v; policy:\n%s",
					q, level, omit, cfg.Level, wantOmit, data)
			}
			hidden := cfg.Level == auditinternal.LevelNone ||
				slices.Contains(cfg.OmitStages, auditinternal.StageRequestReceived) && slices.Contains(cfg.OmitStages, auditinternal.StageResponseComplete)
			if hidden && !slices.ContainsFunc(gaps, func(g auditpolicy.Gap) bool { return g.Covers(q) }) {
				t.Fatalf("request %+v is not logged, yet no gap covers it (gaps: %q); policy:\n%s", q, auditpolicy.Describe(gaps), data)
			}
			leaked := cfg.Level == auditinternal.LevelRequestResponse && !slices.Contains(cfg.OmitStages, auditinternal.StageResponseComplete)
			if leaked && !slices.ContainsFunc(leaks, func(g auditpolicy.Gap) bool { return g.Covers(q) }) {
				t.Fatalf("request %+v is logged with its token, yet no leak covers it (leaks: %q); policy:\n%s", q, auditpolicy.Describe(leaks), data)
			}
		}
	}
	if loaded < 1000 {
		t.Fatalf("only %d of 3000 random policies loaded: the generator makes invalid ones", loaded)
	}
	t.Logf("%d random policies compared on %d token requests each", loaded, len(auditpolicytest.Probes()))
}
