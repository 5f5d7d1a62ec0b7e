// Package auditpolicy reads a kube-apiserver audit policy (audit.k8s.io/v1
// Policy) and tells which token requests (create on serviceaccounts/token)
// it keeps out of the audit log, by the apiserver's own matching rules.
// It is pure: it reads bytes and returns values.
package auditpolicy

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Levels and stages of audit.k8s.io/v1.
const (
	LevelNone             = "None"
	LevelRequestResponse  = "RequestResponse"
	StageRequestReceived  = "RequestReceived"
	StageResponseComplete = "ResponseComplete"
)

// Policy is the part of an audit.k8s.io/v1 Policy that decides what is
// logged.
type Policy struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Rules      []Rule   `yaml:"rules"`
	OmitStages []string `yaml:"omitStages"`
}

// Rule is audit.k8s.io/v1 PolicyRule.
type Rule struct {
	Level           string           `yaml:"level"`
	Users           []string         `yaml:"users"`
	UserGroups      []string         `yaml:"userGroups"`
	Verbs           []string         `yaml:"verbs"`
	Resources       []GroupResources `yaml:"resources"`
	Namespaces      []string         `yaml:"namespaces"`
	NonResourceURLs []string         `yaml:"nonResourceURLs"`
	OmitStages      []string         `yaml:"omitStages"`
}

// GroupResources is audit.k8s.io/v1 GroupResources.
type GroupResources struct {
	Group         string   `yaml:"group"`
	Resources     []string `yaml:"resources"`
	ResourceNames []string `yaml:"resourceNames"`
}

// Parse reads a policy in YAML or JSON. It checks the kind and that there
// are rules (kube-apiserver refuses a policy without), not every field:
// fields it does not know are ignored.
func Parse(data []byte) (*Policy, error) {
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("parse audit policy: %w", err)
	}
	if p.Kind != "Policy" || !strings.HasPrefix(p.APIVersion, "audit.k8s.io/") {
		return nil, fmt.Errorf("parse audit policy: kind %q of %q, want Policy of audit.k8s.io/v1", p.Kind, p.APIVersion)
	}
	if len(p.Rules) == 0 {
		return nil, errors.New("parse audit policy: no rules (kube-apiserver refuses such a policy)")
	}
	return &p, nil
}

// Request is a token request as a policy sees it: who asks, and for which
// service account.
type Request struct {
	User      string
	Groups    []string
	Namespace string
	Name      string // the service account
}

// Decide returns what the policy does with r, as kube-apiserver decides it:
// the index of the first rule that matches (-1 when none does: the level
// is then None), the level, and the stages omitted (the rule's and the
// policy's).
func (p *Policy) Decide(r Request) (rule int, level string, omit []string) {
	for i := range p.Rules {
		if p.Rules[i].matches(r) {
			return i, p.Rules[i].Level, union(p.OmitStages, p.Rules[i].OmitStages)
		}
	}
	return -1, LevelNone, slices.Clone(p.OmitStages)
}

// Hidden reports whether a token request given level and omit never
// reaches tokenwatch: not logged, or logged at neither of the stages it
// reads (ResponseComplete, and RequestReceived when that is lost).
func Hidden(level string, omit []string) bool {
	return level == LevelNone || level == "" ||
		slices.Contains(omit, StageRequestReceived) && slices.Contains(omit, StageResponseComplete)
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// matches is kube-apiserver's ruleMatches for a token request (verb create,
// core group, serviceaccounts/token, a namespaced resource request): the
// rule matches token requests at all, and q meets its conditions.
func (r *Rule) matches(q Request) bool {
	g, ok := r.tokenGap()
	return ok && g.Covers(q)
}

// tokenResource reports whether a policy's resource entry names
// serviceaccounts/token.
func tokenResource(res string) bool {
	return res == "serviceaccounts/token" || res == "*" || res == "*/token" || res == "serviceaccounts/*"
}
