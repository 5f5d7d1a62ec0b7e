// Package auditpolicytest makes random audit policies and token requests
// to hold auditpolicy to kube-apiserver's own evaluator.
package auditpolicytest

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/tokenwatch/tokenwatch/internal/auditpolicy"
)

// pick returns a random subset of from, in order, possibly empty.
func pick(rng *rand.Rand, from ...string) []string {
	var out []string
	for _, s := range from {
		if rng.IntN(3) == 0 {
			out = append(out, s)
		}
	}
	return out
}

func list(key string, vals []string, indent string) string {
	if len(vals) == 0 {
		return ""
	}
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = fmt.Sprintf("%q", v)
	}
	return indent + key + ": [" + strings.Join(q, ", ") + "]\n"
}

// Policy returns a random valid audit.k8s.io/v1 Policy of one to five rules
// over the names Probes uses, as YAML.
func Policy(rng *rand.Rand) []byte {
	var b strings.Builder
	b.WriteString("apiVersion: audit.k8s.io/v1\nkind: Policy\n")
	b.WriteString(list("omitStages", pick(rng, "RequestReceived", "ResponseComplete"), ""))
	b.WriteString("rules:\n")
	levels := []string{"None", "Metadata", "Request", "RequestResponse"}
	for range 1 + rng.IntN(5) {
		fmt.Fprintf(&b, "  - level: %s\n", levels[rng.IntN(len(levels))])
		b.WriteString(list("users", pick(rng, "alice", "mallory"), "    "))
		b.WriteString(list("userGroups", pick(rng, "ops", "system:authenticated"), "    "))
		b.WriteString(list("verbs", pick(rng, "create", "get", "watch"), "    "))
		b.WriteString(list("omitStages", pick(rng, "RequestReceived", "ResponseComplete", "ResponseStarted"), "    "))
		if rng.IntN(6) == 0 {
			b.WriteString(list("nonResourceURLs", []string{"/healthz*", "*"}[rng.IntN(2):], "    "))
			continue
		}
		b.WriteString(list("namespaces", pick(rng, "kube-system", "team-a", ""), "    "))
		if rng.IntN(3) == 0 {
			continue
		}
		b.WriteString("    resources:\n")
		for range 1 + rng.IntN(2) {
			fmt.Fprintf(&b, "      - group: %q\n", []string{"", "", "apps"}[rng.IntN(3)])
			res := pick(rng, "serviceaccounts/token", "*", "*/token", "serviceaccounts/*", "serviceaccounts", "pods/*")
			b.WriteString(list("resources", res, "        "))
			if len(res) > 0 {
				b.WriteString(list("resourceNames", pick(rng, "admin", "default"), "        "))
			}
		}
	}
	return []byte(b.String())
}

// Probes returns token requests covering every name Policy uses, and
// others.
func Probes() []auditpolicy.Request {
	var out []auditpolicy.Request
	for _, user := range []string{"alice", "mallory", "bob"} {
		for _, groups := range [][]string{nil, {"system:authenticated"}, {"ops", "system:authenticated"}} {
			for _, ns := range []string{"kube-system", "team-a", "team-b"} {
				for _, name := range []string{"admin", "default", "other"} {
					out = append(out, auditpolicy.Request{User: user, Groups: groups, Namespace: ns, Name: name})
				}
			}
		}
	}
	return out
}
