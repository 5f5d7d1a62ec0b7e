package lineage

import (
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func TestIssuedJTI(t *testing.T) {
	tests := []struct {
		name string
		give map[string]string
		want string
	}{
		{"none", nil, ""},
		{"ga key", map[string]string{AnnotationIssuedCredentialID: "JTI=0b1c2d3e-aaaa-bbbb-cccc-000000000001"}, "0b1c2d3e-aaaa-bbbb-cccc-000000000001"},
		{"1.29 alpha key", map[string]string{AnnotationIssuedCredentialIDAlpha: "JTI=abc"}, "abc"},
		{"ga key wins", map[string]string{AnnotationIssuedCredentialID: "JTI=new", AnnotationIssuedCredentialIDAlpha: "JTI=old"}, "new"},
		{"no prefix", map[string]string{AnnotationIssuedCredentialID: "abc"}, ""},
		{"empty uuid", map[string]string{AnnotationIssuedCredentialID: "JTI="}, ""},
		{"x509 is no token", map[string]string{AnnotationIssuedCredentialID: "X509SHA256=ff"}, ""},
		{"bad ga falls back to alpha", map[string]string{AnnotationIssuedCredentialID: "x", AnnotationIssuedCredentialIDAlpha: "JTI=a"}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IssuedJTI(&audit.Event{Annotations: tt.give}); got != tt.want {
				t.Errorf("IssuedJTI(%v) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
	if got := IssuedJTI(nil); got != "" {
		t.Errorf("IssuedJTI(nil) = %q, want \"\"", got)
	}
}

func TestCredentialJTI(t *testing.T) {
	tests := []struct {
		name string
		give *audit.UserInfo
		want string
	}{
		{"nil user", nil, ""},
		{"no extra", &audit.UserInfo{Username: "alice"}, ""},
		{"token", &audit.UserInfo{Extra: map[string][]string{ExtraCredentialID: {"JTI=u-1"}}}, "u-1"},
		{"certificate", &audit.UserInfo{Extra: map[string][]string{ExtraCredentialID: {"X509SHA256=abcdef"}}}, ""},
		{"token after other", &audit.UserInfo{Extra: map[string][]string{ExtraCredentialID: {"X509SHA256=ab", "JTI=u-2"}}}, "u-2"},
		{"empty uuid", &audit.UserInfo{Extra: map[string][]string{ExtraCredentialID: {"JTI="}}}, ""},
		{"other key", &audit.UserInfo{Extra: map[string][]string{"authentication.kubernetes.io/pod-name": {"JTI=x"}}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CredentialJTI(tt.give); got != tt.want {
				t.Errorf("CredentialJTI(%+v) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
}

func TestLegacyServiceAccount(t *testing.T) {
	tests := []struct {
		name string
		give map[string]string
		want string
	}{
		{"none", nil, ""},
		{"legacy", map[string]string{AnnotationLegacyToken: "system:serviceaccount:ns:sa"}, "system:serviceaccount:ns:sa"},
		{"not a service account", map[string]string{AnnotationLegacyToken: "alice"}, ""},
		{"other annotation", map[string]string{"authorization.k8s.io/decision": "allow"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LegacyServiceAccount(&audit.Event{Annotations: tt.give}); got != tt.want {
				t.Errorf("LegacyServiceAccount(%v) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
	if got := LegacyServiceAccount(nil); got != "" {
		t.Errorf("LegacyServiceAccount(nil) = %q, want \"\"", got)
	}
}

func TestAction(t *testing.T) {
	ev := func(verb, group, resource, sub string) *audit.Event {
		return &audit.Event{Verb: verb, ObjectRef: &audit.ObjectReference{APIGroup: group, Resource: resource, Subresource: sub}}
	}
	imp := ev("list", "", "pods", "")
	imp.ImpersonatedUser = &audit.UserInfo{Username: "bob"}
	impNoRef := &audit.Event{Verb: "get", ImpersonatedUser: &audit.UserInfo{Username: "bob"}}
	tests := []struct {
		name string
		give *audit.Event
		want string
	}{
		{"nil", nil, ""},
		{"no objectRef", &audit.Event{Verb: "get"}, ""},
		{"get secrets", ev("get", "", "secrets", ""), ActionSecretsRead},
		{"list secrets", ev("list", "", "secrets", ""), ActionSecretsRead},
		{"watch secrets", ev("watch", "", "secrets", ""), ActionSecretsRead},
		{"create secrets", ev("create", "", "secrets", ""), ""},
		{"delete secrets", ev("delete", "", "secrets", ""), ""},
		{"secrets in other group", ev("get", "example.com", "secrets", ""), ""},
		{"create pods/exec", ev("create", "", "pods", "exec"), ActionPodExec},
		{"get pods/exec", ev("get", "", "pods", "exec"), ActionPodExec},
		{"create pods/attach", ev("create", "", "pods", "attach"), ActionPodExec},
		{"get pods/portforward", ev("get", "", "pods", "portforward"), ActionPodExec},
		{"list pods/exec", ev("list", "", "pods", "exec"), ""},
		{"get pods/log", ev("get", "", "pods", "log"), ""},
		{"create pods", ev("create", "", "pods", ""), ""},
		{"get nodes/proxy", ev("get", "", "nodes", "proxy"), ActionPodExec},
		{"create nodes/proxy", ev("create", "", "nodes", "proxy"), ActionPodExec},
		{"get nodes", ev("get", "", "nodes", ""), ""},
		{"patch ephemeralcontainers", ev("patch", "", "pods", "ephemeralcontainers"), ActionPodExec},
		{"update ephemeralcontainers", ev("update", "", "pods", "ephemeralcontainers"), ActionPodExec},
		{"get ephemeralcontainers", ev("get", "", "pods", "ephemeralcontainers"), ""},
		{"exec in other group", ev("create", "example.com", "pods", "exec"), ""},
		{"create role", ev("create", groupRBAC, "roles", ""), ActionRBACWrite},
		{"update rolebinding", ev("update", groupRBAC, "rolebindings", ""), ActionRBACWrite},
		{"patch clusterrole", ev("patch", groupRBAC, "clusterroles", ""), ActionRBACWrite},
		{"delete clusterrolebinding", ev("delete", groupRBAC, "clusterrolebindings", ""), ActionRBACWrite},
		{"deletecollection roles", ev("deletecollection", groupRBAC, "roles", ""), ActionRBACWrite},
		{"get role", ev("get", groupRBAC, "roles", ""), ""},
		{"list clusterroles", ev("list", groupRBAC, "clusterroles", ""), ""},
		{"roles in core group", ev("create", "", "roles", ""), ""},
		{"rbac other resource", ev("create", groupRBAC, "widgets", ""), ""},
		{"create token", ev("create", "", "serviceaccounts", "token"), ActionTokenMint},
		{"get token", ev("get", "", "serviceaccounts", "token"), ""},
		{"create serviceaccount", ev("create", "", "serviceaccounts", ""), ""},
		{"create csr", ev("create", groupCertificates, "certificatesigningrequests", ""), ActionCSRCreate},
		{"update csr approval", ev("update", groupCertificates, "certificatesigningrequests", "approval"), ""},
		{"get csr", ev("get", groupCertificates, "certificatesigningrequests", ""), ""},
		{"csr in core group", ev("create", "", "certificatesigningrequests", ""), ""},
		{"impersonated", imp, ActionImpersonate},
		{"impersonated without objectRef", impNoRef, ActionImpersonate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Action(tt.give); got != tt.want {
				t.Errorf("Action(%s) = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}
