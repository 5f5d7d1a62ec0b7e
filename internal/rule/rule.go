package rule

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Platforms.
const (
	PlatformSelfManaged = "self-managed"
	PlatformAny         = "any"
)

// seed is the exclusion list of the seed rule (Elastic's "Kubernetes Service
// Account Token Created via TokenRequest API", rule 4df91789), verbatim and in
// order. managed marks the managed-cloud identities that cannot exist on a
// self-managed control plane.
var seed = []struct {
	pattern string
	managed bool
}{
	{"system:kube-controller-manager", false},
	{"system:kube-scheduler", false},
	{"system:node:*", false},
	{"system:serviceaccount:kube-system:*", false},
	{"eks:*", true},
	{"aksService", true},
	{"aks-service", true},
	{"masterclient", true},
	{"nodeclient", true},
	{"system:serviceaccount:gke-managed-system:*", true},
	{"system:serviceaccount:gke-connect:*", true},
	{"system:serviceaccount:anthos-identity-service:*", true},
	{"system:gke-controller-manager", true},
	{"system:serviceaccount:tigera-operator:*", false},
	{"system:serviceaccount:calico-system:*", false},
}

// DefaultPatterns returns the seed rule's exclusion list, verbatim.
func DefaultPatterns() []string {
	out := make([]string, len(seed))
	for i, s := range seed {
		out[i] = s.pattern
	}
	return out
}

// Pattern is an added exclusion: a user pattern, optionally narrowed to the
// target service account's namespace and name. Empty narrowing lists match
// any target. Patterns match like KQL keyword queries: exact,
// case-sensitive, '*' matches any run of characters (possibly empty).
type Pattern struct {
	User            string   `json:"user" yaml:"user"`
	Namespaces      []string `json:"namespaces,omitempty" yaml:"namespaces,omitempty"`
	ServiceAccounts []string `json:"service_accounts,omitempty" yaml:"service_accounts,omitempty"`
}

// Config is the exclusions section of the aggregator's configuration.
type Config struct {
	// StrictGroups excludes a system:node:* name only with the group
	// system:nodes, and a system:serviceaccount:<ns>:* name only with the
	// group system:serviceaccounts:<ns>.
	StrictGroups bool `yaml:"strict_groups"`
	// Platform is "self-managed" (managed-cloud identities of the seed list
	// are not excluded) or "any" (the seed list whole).
	Platform string `yaml:"platform"`
	// ReplaceDefaults drops the seed list; only Add remains.
	ReplaceDefaults bool `yaml:"replace_defaults"`
	// Add holds exclusions added to (or replacing) the seed list.
	Add []Pattern `yaml:"add"`
}

// matchesAll reports whether pattern, made of '*' alone, matches every
// string.
func matchesAll(pattern string) bool { return pattern != "" && strings.Trim(pattern, "*") == "" }

// anyTarget reports whether a narrowing list narrows nothing: empty, or
// holding a pattern that matches every name.
func anyTarget(patterns []string) bool {
	return len(patterns) == 0 || slices.ContainsFunc(patterns, matchesAll)
}

// everyone reports whether p excludes every token request.
func (p Pattern) everyone() bool {
	return matchesAll(p.User) && anyTarget(p.Namespaces) && anyTarget(p.ServiceAccounts)
}

// Warnings names the added exclusions that blind tokenwatch to the token
// requests an attacker most likely makes without being an error: a user
// pattern matching every service account (the identity a stolen token acts
// as), for any target.
func (cfg Config) Warnings() []string {
	const probe = "system:serviceaccount:tokenwatch-probe-namespace:tokenwatch-probe-name"
	var out []string
	for i, p := range cfg.Add {
		if !p.everyone() && Wildcard(p.User, probe) && anyTarget(p.Namespaces) && anyTarget(p.ServiceAccounts) {
			out = append(out, fmt.Sprintf("exclusions.add[%d].user %q excludes the token requests of every service account, for any target: a stolen service-account token minting more goes unseen", i, p.User))
		}
	}
	return out
}

// DefaultConfig returns the contract's defaults: both hardenings on, the seed
// list kept, nothing added.
func DefaultConfig() Config {
	return Config{StrictGroups: true, Platform: PlatformSelfManaged}
}

// Validate checks cfg, naming the offending field by its key in the
// configuration file; several problems are joined (errors.Join).
func (cfg Config) Validate() error {
	var errs []error
	switch cfg.Platform {
	case PlatformSelfManaged, PlatformAny:
	default:
		errs = append(errs, fmt.Errorf("exclusions.platform: must be %q or %q, got %q", PlatformSelfManaged, PlatformAny, cfg.Platform))
	}
	for i, p := range cfg.Add {
		if p.User == "" {
			errs = append(errs, fmt.Errorf("exclusions.add[%d].user: must not be empty", i))
		}
		if p.everyone() {
			errs = append(errs, fmt.Errorf("exclusions.add[%d]: user %q for any service account excludes every token request, so tokenwatch would alert on nothing; narrow it with namespaces or service_accounts", i, p.User))
		}
		for j, n := range p.Namespaces {
			if n == "" {
				errs = append(errs, fmt.Errorf("exclusions.add[%d].namespaces[%d]: must not be empty", i, j))
			}
		}
		for j, n := range p.ServiceAccounts {
			if n == "" {
				errs = append(errs, fmt.Errorf("exclusions.add[%d].service_accounts[%d]: must not be empty", i, j))
			}
		}
	}
	return errors.Join(errs...)
}

// Rule evaluates audit events. It is immutable and safe for concurrent use.
type Rule struct {
	strict   bool
	platform string
	entries  []entry
	id       uint64
}

type entry struct {
	user       string
	namespaces []string
	names      []string
	managed    bool // a managed-cloud identity of the seed list
	seed       bool // from the seed list, not exclusions.add
}

// New builds a Rule from cfg after validating it.
func New(cfg Config) (*Rule, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Rule{strict: cfg.StrictGroups, platform: cfg.Platform}
	if !cfg.ReplaceDefaults {
		for _, s := range seed {
			r.entries = append(r.entries, entry{user: s.pattern, managed: s.managed, seed: true})
		}
	}
	for _, p := range cfg.Add {
		r.entries = append(r.entries, entry{
			user:       p.User,
			namespaces: append([]string(nil), p.Namespaces...),
			names:      append([]string(nil), p.ServiceAccounts...),
		})
	}
	r.id = ruleID(cfg)
	return r, nil
}

// ID identifies what the rule decides: two rules with the same ID judge
// every event alike. It is a digest of the configuration and the seed list,
// so it is the same across restarts of one build and changes when a reload
// changes the exclusions. It is never 0.
func (r *Rule) ID() uint64 { return r.id }

// ruleID digests cfg and the seed list.
func ruleID(cfg Config) uint64 {
	list := make([]string, len(seed))
	for i, s := range seed {
		list[i] = fmt.Sprintf("%s managed=%t", s.pattern, s.managed)
	}
	b, err := json.Marshal(struct {
		Seed   []string
		Config Config
	}{list, cfg})
	if err != nil { // a Config always encodes
		panic("rule: encode config: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return max(binary.BigEndian.Uint64(sum[:8]), 1)
}

// Verdict is the outcome of Evaluate.
type Verdict struct {
	// Match: a create on serviceaccounts/token with a user.username present.
	Match bool `json:"match"`
	// Excluded: Match, and excluded by a pattern.
	Excluded bool `json:"excluded,omitempty"`
	// By is the pattern that excluded the event.
	By string `json:"by,omitempty"`
	// Mismatch says why a hardening kept a pattern from excluding the event
	// (reported as tokenwatch.exclusion.mismatch); "" otherwise.
	Mismatch string `json:"mismatch,omitempty"`
	// ByDefault: Excluded by the seed (default) list only, no
	// exclusions.add entry excluding the event too. Token lineage overrides
	// such an exclusion for a chain (a mint authenticated with a watched
	// token); an explicit entry still wins.
	ByDefault bool `json:"by_default,omitempty"`
	// Rule is the ID of the rule that judged a matching event (Rule.ID),
	// 0 for one that does not match (no exclusion is involved) and for a
	// verdict made elsewhere. A verdict kept for later (a held event's) is
	// still the rule's while the rule in force has that ID.
	Rule uint64 `json:"-"`
}

// Alerts reports whether the verdict calls for an alert.
func (v Verdict) Alerts() bool { return v.Match && !v.Excluded }

// Evaluate decides about e: Judge of its Subject.
func (r *Rule) Evaluate(e *audit.Event) Verdict {
	s := SubjectOf(e)
	return r.Judge(&s)
}

// Judge decides about the event whose subject is s. Only the authenticated
// user.username counts, never impersonatedUser. An empty username counts as
// absent: the apiserver always logs a name (system:anonymous for anonymous
// requests). It does not retain s or its strings.
func (r *Rule) Judge(s *Subject) Verdict {
	user := s.User
	if !s.TokenCreate() || user == "" {
		return Verdict{}
	}
	v := Verdict{Match: true, Rule: r.id}
	for i, en := range r.entries {
		ok, mismatch := r.excludes(en, s, v.Mismatch == "")
		if !ok {
			if mismatch != "" {
				v.Mismatch = mismatch
			}
			continue
		}
		v.Excluded, v.By, v.Mismatch = true, en.user, ""
		v.ByDefault = en.seed && !r.addedExcludes(r.entries[i+1:], s)
		return v
	}
	return v
}

// excludes reports whether en excludes the event of s; when a hardening
// kept a matching pattern from excluding it and why is set, mismatch says
// why (only the first reason is reported: the others are not formatted).
func (r *Rule) excludes(en entry, s *Subject, why bool) (ok bool, mismatch string) {
	if !Wildcard(en.user, s.User) || !en.targets(s.Namespace, s.Name) {
		return false, ""
	}
	if en.managed && r.platform == PlatformSelfManaged {
		if !why {
			return false, ""
		}
		return false, fmt.Sprintf("exclusion %q is a managed-cloud identity, not applied with platform %s", en.user, r.platform)
	}
	if r.strict {
		if want := requiredGroup(s.User); want != "" && !hasGroup(s.Groups, want) {
			if !why {
				return false, ""
			}
			return false, fmt.Sprintf("exclusion %q not applied: user %q lacks group %q (strict_groups)", en.user, s.User, want)
		}
	}
	return true, ""
}

// addedExcludes reports whether one of the exclusions.add entries among
// entries excludes the event of s.
func (r *Rule) addedExcludes(entries []entry, s *Subject) bool {
	for _, en := range entries {
		if en.seed {
			continue
		}
		if ok, _ := r.excludes(en, s, false); ok {
			return true
		}
	}
	return false
}

// targets reports whether en applies to the service account ns/name.
func (en entry) targets(ns, name string) bool {
	if len(en.namespaces) == 0 && len(en.names) == 0 {
		return true
	}
	return anyWildcard(en.namespaces, ns) && anyWildcard(en.names, name)
}

// anyWildcard reports whether one of patterns matches s; an empty list
// matches anything.
func anyWildcard(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if Wildcard(p, s) {
			return true
		}
	}
	return false
}

const (
	nodePrefix = "system:node:"
	saPrefix   = "system:serviceaccount:"
)

// requiredGroup is the group strict_groups requires for user to be excluded
// as a system identity, "" when none is required.
func requiredGroup(user string) string {
	if strings.HasPrefix(user, nodePrefix) {
		return "system:nodes"
	}
	if rest, ok := strings.CutPrefix(user, saPrefix); ok {
		ns, _, _ := strings.Cut(rest, ":")
		return "system:serviceaccounts:" + ns
	}
	return ""
}

func hasGroup(groups []string, want string) bool {
	for _, g := range groups {
		if g == want {
			return true
		}
	}
	return false
}

// Wildcard reports whether s matches pattern, in which '*' matches any run of
// characters (possibly empty) and every other byte matches itself exactly.
func Wildcard(pattern, s string) bool {
	// Iterative glob with single-star backtracking: linear in practice, no
	// exponential blow-up on many stars.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
