package check

import (
	"os"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	auditinternal "k8s.io/apiserver/pkg/apis/audit"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/apiserver/pkg/audit/policy"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// TestAuditPolicyDecodesStrictly loads the kubeadm audit policy with the
// audit.k8s.io/v1 types, refusing unknown or duplicate fields.
func TestAuditPolicyDecodesStrictly(t *testing.T) {
	data, err := os.ReadFile(deployPath(t, "kubeadm", "audit-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := auditv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	codecs := serializer.NewCodecFactory(scheme, serializer.EnableStrict)
	obj, gvk, err := codecs.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("strict decode audit-policy.yaml: %v", err)
	}
	if gvk.Group != "audit.k8s.io" || gvk.Version != "v1" || gvk.Kind != "Policy" {
		t.Fatalf("audit-policy.yaml is %v, want audit.k8s.io/v1 Policy", gvk)
	}
	p := obj.(*auditv1.Policy)
	for i, r := range p.Rules {
		if r.Level == auditv1.LevelRequestResponse {
			t.Errorf("rule %d logs at RequestResponse: the policy must never write response bodies (TokenRequest's holds the token)", i)
		}
	}
}

// TestAuditPolicyLogsTokenRequests evaluates the policy with the apiserver's
// own loader (with its validation) and rule evaluator: every TokenRequest,
// whoever makes it, is logged at Request level with both stages tokenwatch
// uses, and nothing logs its response.
func TestAuditPolicyLogsTokenRequests(t *testing.T) {
	p, err := policy.LoadPolicyFromFile(deployPath(t, "kubeadm", "audit-policy.yaml"))
	if err != nil {
		t.Fatalf("load audit policy as kube-apiserver does: %v", err)
	}
	ev := policy.NewPolicyRuleEvaluator(p)

	tokenRequest := func(u user.Info, ns string) authorizer.AttributesRecord {
		return authorizer.AttributesRecord{
			User: u, Verb: "create", Namespace: ns, APIGroup: "", APIVersion: "v1",
			Resource: "serviceaccounts", Subresource: "token", Name: "default",
			ResourceRequest: true, Path: "/api/v1/namespaces/" + ns + "/serviceaccounts/default/token",
		}
	}
	tests := []struct {
		name  string
		attrs authorizer.AttributesRecord
		want  auditinternal.Level
		stage []auditinternal.Stage // stages that must be logged
	}{
		{"user", tokenRequest(&user.DefaultInfo{Name: "alice", Groups: []string{"system:authenticated"}}, "team-a"),
			auditinternal.LevelRequest, []auditinternal.Stage{auditinternal.StageRequestReceived, auditinternal.StageResponseComplete}},
		{"node", tokenRequest(&user.DefaultInfo{Name: "system:node:cp-1", Groups: []string{"system:nodes", "system:authenticated"}}, "kube-system"),
			auditinternal.LevelRequest, []auditinternal.Stage{auditinternal.StageRequestReceived, auditinternal.StageResponseComplete}},
		{"kube-proxy", tokenRequest(&user.DefaultInfo{Name: "system:kube-proxy"}, "kube-system"),
			auditinternal.LevelRequest, []auditinternal.Stage{auditinternal.StageRequestReceived, auditinternal.StageResponseComplete}},
		{"controller-manager", tokenRequest(&user.DefaultInfo{Name: "system:kube-controller-manager"}, "kube-system"),
			auditinternal.LevelRequest, []auditinternal.Stage{auditinternal.StageRequestReceived, auditinternal.StageResponseComplete}},
		{"service account", tokenRequest(&user.DefaultInfo{Name: "system:serviceaccount:ci:deployer", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:ci"}}, "prod"),
			auditinternal.LevelRequest, []auditinternal.Stage{auditinternal.StageRequestReceived, auditinternal.StageResponseComplete}},
		{"unauthenticated", tokenRequest(&user.DefaultInfo{Name: "system:anonymous", Groups: []string{"system:unauthenticated"}}, "default"),
			auditinternal.LevelRequest, []auditinternal.Stage{auditinternal.StageRequestReceived, auditinternal.StageResponseComplete}},
		// Neighbours that must not be raised to Request: their bodies hold secrets.
		{"secret create", authorizer.AttributesRecord{User: &user.DefaultInfo{Name: "alice"}, Verb: "create", Namespace: "a",
			APIVersion: "v1", Resource: "secrets", ResourceRequest: true}, auditinternal.LevelMetadata, nil},
		{"serviceaccount get", authorizer.AttributesRecord{User: &user.DefaultInfo{Name: "alice"}, Verb: "get", Namespace: "a",
			APIVersion: "v1", Resource: "serviceaccounts", Name: "default", ResourceRequest: true}, auditinternal.LevelMetadata, nil},
		{"tokenreview", authorizer.AttributesRecord{User: &user.DefaultInfo{Name: "alice"}, Verb: "create",
			APIGroup: "authentication.k8s.io", APIVersion: "v1", Resource: "tokenreviews", ResourceRequest: true}, auditinternal.LevelMetadata, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ev.EvaluatePolicyRule(tt.attrs)
			if got.Level != tt.want {
				t.Errorf("level = %s, want %s", got.Level, tt.want)
			}
			for _, s := range tt.stage {
				if slices.Contains(got.OmitStages, s) {
					t.Errorf("stage %s omitted (omitStages %v)", s, got.OmitStages)
				}
			}
		})
	}

	// No attribute combination reaches RequestResponse: no rule has it.
	for i, r := range p.Rules {
		if r.Level == auditinternal.LevelRequestResponse {
			t.Errorf("rule %d logs at RequestResponse", i)
		}
	}
}
