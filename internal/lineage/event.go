package lineage

import (
	"strings"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Audit annotation and user.extra keys lineage reads.
const (
	// AnnotationIssuedCredentialID names the token a TokenRequest minted
	// (Kubernetes 1.30+), value "JTI=<uuid>".
	AnnotationIssuedCredentialID = "authentication.kubernetes.io/issued-credential-id"
	// AnnotationIssuedCredentialIDAlpha is the 1.29 alpha spelling of
	// AnnotationIssuedCredentialID.
	AnnotationIssuedCredentialIDAlpha = "authentication.k8s.io/issued-credential-id"
	// AnnotationLegacyToken marks a request authenticated with a legacy
	// Secret-based token, value "system:serviceaccount:<ns>:<name>".
	AnnotationLegacyToken = "authentication.k8s.io/legacy-token"
	// ExtraCredentialID is the user.extra key naming the credential a
	// request was authenticated with: "JTI=<uuid>" for a token,
	// "X509SHA256=<hex>" for a client certificate.
	ExtraCredentialID = "authentication.kubernetes.io/credential-id"

	jtiPrefix = "JTI="
	saPrefix  = "system:serviceaccount:"
)

// Sensitive action names (tokenwatch.lineage.action).
const (
	ActionSecretsRead = "secrets_read"
	ActionPodExec     = "pod_exec"
	ActionRBACWrite   = "rbac_write"
	ActionTokenMint   = "token_mint"
	ActionCSRCreate   = "csr_create"
	ActionImpersonate = "impersonate"
)

// API groups the sensitive-action table names.
const (
	groupCore         = ""
	groupRBAC         = "rbac.authorization.k8s.io"
	groupCertificates = "certificates.k8s.io"
)

// IssuedJTI returns the ID of the token a TokenRequest's event says it
// minted (the uuid of the issued-credential-id annotation, without "JTI="),
// "" when there is none.
func IssuedJTI(e *audit.Event) string {
	if e == nil {
		return ""
	}
	for _, k := range []string{AnnotationIssuedCredentialID, AnnotationIssuedCredentialIDAlpha} {
		if v, ok := e.Annotations[k]; ok {
			if jti, ok := strings.CutPrefix(v, jtiPrefix); ok && jti != "" {
				return jti
			}
		}
	}
	return ""
}

// CredentialJTI returns the ID of the token u authenticated with (the
// "JTI=" entry of user.extra's credential-id, without the prefix), "" when
// u did not authenticate with a bound token (a client certificate's
// "X509SHA256=" is not one).
func CredentialJTI(u *audit.UserInfo) string {
	if u == nil {
		return ""
	}
	for _, v := range u.Extra[ExtraCredentialID] {
		if jti, ok := strings.CutPrefix(v, jtiPrefix); ok && jti != "" {
			return jti
		}
	}
	return ""
}

// LegacyServiceAccount returns the service account user name
// ("system:serviceaccount:<ns>:<name>") of the legacy Secret-based token a
// request authenticated with, "" when it did not.
func LegacyServiceAccount(e *audit.Event) string {
	if e == nil {
		return ""
	}
	v := e.Annotations[AnnotationLegacyToken]
	if !strings.HasPrefix(v, saPrefix) {
		return ""
	}
	return v
}

// Action returns the sensitive action e is (one of the Action constants),
// "" when it is none. A request with impersonatedUser set is
// ActionImpersonate whatever else it does. Denied attempts count: the
// response is not looked at.
func Action(e *audit.Event) string {
	if e == nil {
		return ""
	}
	if e.ImpersonatedUser != nil {
		return ActionImpersonate
	}
	ref := e.ObjectRef
	if ref == nil {
		return ""
	}
	switch ref.APIGroup {
	case groupCore:
		return coreAction(e.Verb, ref.Resource, ref.Subresource)
	case groupRBAC:
		return rbacAction(e.Verb, ref.Resource, ref.Subresource)
	case groupCertificates:
		if e.Verb == "create" && ref.Resource == "certificatesigningrequests" && ref.Subresource == "" {
			return ActionCSRCreate
		}
	}
	return ""
}

func coreAction(verb, resource, sub string) string {
	switch {
	case resource == "secrets" && sub == "":
		if verb == "get" || verb == "list" || verb == "watch" {
			return ActionSecretsRead
		}
	case resource == "pods":
		return podAction(verb, sub)
	case resource == "nodes" && sub == "proxy":
		return ActionPodExec
	case resource == "serviceaccounts" && sub == "token":
		if verb == "create" {
			return ActionTokenMint
		}
	}
	return ""
}

func podAction(verb, sub string) string {
	switch sub {
	case "exec", "attach", "portforward":
		if verb == "create" || verb == "get" {
			return ActionPodExec
		}
	case "ephemeralcontainers":
		if verb == "update" || verb == "patch" {
			return ActionPodExec
		}
	}
	return ""
}

func rbacAction(verb, resource, sub string) string {
	if sub != "" {
		return ""
	}
	switch resource {
	case "roles", "rolebindings", "clusterroles", "clusterrolebindings":
	default:
		return ""
	}
	switch verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return ActionRBACWrite
	}
	return ""
}
