package rule

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// mint is a create on serviceaccounts/token in ns/name by user with groups.
func mint(user string, groups []string, ns, name string) *audit.Event {
	return &audit.Event{
		Verb:      "create",
		User:      &audit.UserInfo{Username: user, Groups: groups},
		ObjectRef: &audit.ObjectReference{Resource: "serviceaccounts", Subresource: "token", Namespace: ns, Name: name},
	}
}

func mustNew(t *testing.T, cfg Config) *Rule {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return r
}

var (
	seedExact = Config{StrictGroups: false, Platform: PlatformAny}
	nodes     = []string{"system:nodes", "system:authenticated"}
)

func sa(ns string) []string {
	return []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
}

func TestDefaultPatternsVerbatim(t *testing.T) {
	want := []string{
		"system:kube-controller-manager", "system:kube-scheduler", "system:node:*",
		"system:serviceaccount:kube-system:*", "eks:*", "aksService", "aks-service", "masterclient",
		"nodeclient", "system:serviceaccount:gke-managed-system:*", "system:serviceaccount:gke-connect:*",
		"system:serviceaccount:anthos-identity-service:*", "system:gke-controller-manager",
		"system:serviceaccount:tigera-operator:*", "system:serviceaccount:calico-system:*",
	}
	if diff := cmp.Diff(want, DefaultPatterns()); diff != "" {
		t.Errorf("DefaultPatterns() mismatch (-want +got):\n%s", diff)
	}
}

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		give     *audit.Event
		excluded bool
		by       string
		mismatch string // substring; "" means none
	}{
		// Every seed exclusion, with the groups its real identity carries.
		{"controller-manager", DefaultConfig(), mint("system:kube-controller-manager", []string{"system:authenticated"}, "a", "b"), true, "system:kube-controller-manager", ""},
		{"scheduler", DefaultConfig(), mint("system:kube-scheduler", nil, "a", "b"), true, "system:kube-scheduler", ""},
		{"node", DefaultConfig(), mint("system:node:cp-1", nodes, "a", "b"), true, "system:node:*", ""},
		{"kube-system sa", DefaultConfig(), mint("system:serviceaccount:kube-system:a", sa("kube-system"), "a", "b"), true, "system:serviceaccount:kube-system:*", ""},
		{"tigera sa", DefaultConfig(), mint("system:serviceaccount:tigera-operator:op", sa("tigera-operator"), "a", "b"), true, "system:serviceaccount:tigera-operator:*", ""},
		{"calico sa", DefaultConfig(), mint("system:serviceaccount:calico-system:x", sa("calico-system"), "a", "b"), true, "system:serviceaccount:calico-system:*", ""},
		{"eks any", seedExact, mint("eks:node-manager", nil, "a", "b"), true, "eks:*", ""},
		{"aksService any", seedExact, mint("aksService", nil, "a", "b"), true, "aksService", ""},
		{"aks-service any", seedExact, mint("aks-service", nil, "a", "b"), true, "aks-service", ""},
		{"masterclient any", seedExact, mint("masterclient", nil, "a", "b"), true, "masterclient", ""},
		{"nodeclient any", seedExact, mint("nodeclient", nil, "a", "b"), true, "nodeclient", ""},
		{"gke-managed-system any", seedExact, mint("system:serviceaccount:gke-managed-system:x", nil, "a", "b"), true, "system:serviceaccount:gke-managed-system:*", ""},
		{"gke-connect any", seedExact, mint("system:serviceaccount:gke-connect:x", nil, "a", "b"), true, "system:serviceaccount:gke-connect:*", ""},
		{"anthos any", seedExact, mint("system:serviceaccount:anthos-identity-service:x", nil, "a", "b"), true, "system:serviceaccount:anthos-identity-service:*", ""},
		{"gke-controller-manager any", seedExact, mint("system:gke-controller-manager", nil, "a", "b"), true, "system:gke-controller-manager", ""},

		// Near misses: exact, case-sensitive, '*' needs the colon before it.
		{"kube-systemx", seedExact, mint("system:serviceaccount:kube-systemx:a", nil, "a", "b"), false, "", ""},
		{"System:Node:x", seedExact, mint("System:Node:x", nil, "a", "b"), false, "", ""},
		{"system:node", seedExact, mint("system:node", nil, "a", "b"), false, "", ""},
		{"eks-admin", seedExact, mint("eks-admin", nil, "a", "b"), false, "", ""},
		{"aksservice lower", seedExact, mint("aksservice", nil, "a", "b"), false, "", ""},
		{"controller-manager suffix", seedExact, mint("system:kube-controller-managerx", nil, "a", "b"), false, "", ""},
		{"controller-manager prefix", seedExact, mint("xsystem:kube-controller-manager", nil, "a", "b"), false, "", ""},
		{"kube-system without name", seedExact, mint("system:serviceaccount:kube-system", nil, "a", "b"), false, "", ""},
		{"empty node name matches star", seedExact, mint("system:node:", nil, "a", "b"), true, "system:node:*", ""},
		{"plain user", DefaultConfig(), mint("alice", nil, "a", "b"), false, "", ""},
		{"anonymous", DefaultConfig(), mint("system:anonymous", []string{"system:unauthenticated"}, "a", "b"), false, "", ""},

		// strict_groups: names without their group alert, saying why.
		{"node without group", DefaultConfig(), mint("system:node:cp-1", []string{"system:authenticated"}, "a", "b"), false, "", `lacks group "system:nodes"`},
		{"node without group seed", seedExact, mint("system:node:cp-1", nil, "a", "b"), true, "system:node:*", ""},
		{"sa without group", DefaultConfig(), mint("system:serviceaccount:kube-system:a", []string{"system:serviceaccounts"}, "a", "b"), false, "", `lacks group "system:serviceaccounts:kube-system"`},
		{"sa with other ns group", DefaultConfig(), mint("system:serviceaccount:kube-system:a", sa("default"), "a", "b"), false, "", "strict_groups"},
		{"sa group check is exact", DefaultConfig(), mint("system:serviceaccount:kube-system:a", []string{"system:serviceaccounts:kube-system "}, "a", "b"), false, "", "strict_groups"},
		{"sa forged with colon", DefaultConfig(), mint("system:serviceaccount:kube-system:a:b", sa("kube-system"), "a", "b"), true, "system:serviceaccount:kube-system:*", ""},
		{"controller-manager needs no group", DefaultConfig(), mint("system:kube-controller-manager", nil, "a", "b"), true, "system:kube-controller-manager", ""},

		// platform: managed-cloud names under self-managed vs any.
		{"eks self-managed", DefaultConfig(), mint("eks:node-manager", nil, "a", "b"), false, "", `"eks:*" is a managed-cloud identity`},
		{"aksService self-managed", DefaultConfig(), mint("aksService", nil, "a", "b"), false, "", "managed-cloud"},
		{"aks-service self-managed", DefaultConfig(), mint("aks-service", nil, "a", "b"), false, "", "managed-cloud"},
		{"masterclient self-managed", DefaultConfig(), mint("masterclient", nil, "a", "b"), false, "", "managed-cloud"},
		{"nodeclient self-managed", DefaultConfig(), mint("nodeclient", nil, "a", "b"), false, "", "managed-cloud"},
		{"gke-controller-manager self-managed", DefaultConfig(), mint("system:gke-controller-manager", nil, "a", "b"), false, "", "managed-cloud"},
		{"gke-connect self-managed", DefaultConfig(), mint("system:serviceaccount:gke-connect:x", sa("gke-connect"), "a", "b"), false, "", "managed-cloud"},
		{"gke-managed-system self-managed", DefaultConfig(), mint("system:serviceaccount:gke-managed-system:x", sa("gke-managed-system"), "a", "b"), false, "", "managed-cloud"},
		{"anthos self-managed", DefaultConfig(), mint("system:serviceaccount:anthos-identity-service:x", sa("anthos-identity-service"), "a", "b"), false, "", "managed-cloud"},
		{"eks any with strict", Config{StrictGroups: true, Platform: PlatformAny}, mint("eks:node-manager", nil, "a", "b"), true, "eks:*", ""},
		{"gke-connect any strict without group", Config{StrictGroups: true, Platform: PlatformAny}, mint("system:serviceaccount:gke-connect:x", nil, "a", "b"), false, "", "strict_groups"},
		{"tigera is not managed", DefaultConfig(), mint("system:serviceaccount:tigera-operator:op", sa("tigera-operator"), "a", "b"), true, "system:serviceaccount:tigera-operator:*", ""},

		// Added patterns, narrowing and replace_defaults.
		{"added user", Config{Platform: PlatformAny, Add: []Pattern{{User: "system:serviceaccount:vault:vault"}}}, mint("system:serviceaccount:vault:vault", nil, "x", "y"), true, "system:serviceaccount:vault:vault", ""},
		{"added needs group when strict", Config{StrictGroups: true, Platform: PlatformAny, Add: []Pattern{{User: "system:serviceaccount:vault:vault"}}}, mint("system:serviceaccount:vault:vault", nil, "x", "y"), false, "", `lacks group "system:serviceaccounts:vault"`},
		{"added with group when strict", Config{StrictGroups: true, Platform: PlatformAny, Add: []Pattern{{User: "system:serviceaccount:vault:vault"}}}, mint("system:serviceaccount:vault:vault", sa("vault"), "x", "y"), true, "system:serviceaccount:vault:vault", ""},
		{"namespace narrowing in", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault", Namespaces: []string{"team-*"}}}}, mint("vault", nil, "team-a", "app"), true, "vault", ""},
		{"namespace narrowing out", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault", Namespaces: []string{"team-*"}}}}, mint("vault", nil, "prod", "app"), false, "", ""},
		{"namespace narrowing case", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault", Namespaces: []string{"team-*"}}}}, mint("vault", nil, "Team-a", "app"), false, "", ""},
		{"sa narrowing in", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault", ServiceAccounts: []string{"app", "web-*"}}}}, mint("vault", nil, "any", "web-1"), true, "vault", ""},
		{"sa narrowing out", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault", ServiceAccounts: []string{"app", "web-*"}}}}, mint("vault", nil, "any", "admin"), false, "", ""},
		{"both narrowings must hold", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault", Namespaces: []string{"team-a"}, ServiceAccounts: []string{"app"}}}}, mint("vault", nil, "team-b", "app"), false, "", ""},
		{"replace defaults drops seed", Config{Platform: PlatformAny, ReplaceDefaults: true, Add: []Pattern{{User: "vault"}}}, mint("system:kube-controller-manager", nil, "a", "b"), false, "", ""},
		{"replace defaults keeps added", Config{Platform: PlatformAny, ReplaceDefaults: true, Add: []Pattern{{User: "vault"}}}, mint("vault", nil, "a", "b"), true, "vault", ""},
		{"replace defaults with nothing", Config{Platform: PlatformAny, ReplaceDefaults: true}, mint("system:node:cp-1", nodes, "a", "b"), false, "", ""},
		{"later pattern excludes after mismatch", Config{StrictGroups: true, Platform: PlatformSelfManaged, Add: []Pattern{{User: "eks:node-manager"}}}, mint("eks:node-manager", nil, "a", "b"), true, "eks:node-manager", ""},

		// Impersonation: the authenticated username decides.
		{"admin impersonating node", DefaultConfig(), func() *audit.Event {
			e := mint("kubernetes-admin", []string{"system:masters"}, "a", "b")
			e.ImpersonatedUser = &audit.UserInfo{Username: "system:node:cp-1", Groups: nodes}
			return e
		}(), false, "", ""},
		{"node impersonating alice", DefaultConfig(), func() *audit.Event {
			e := mint("system:node:cp-1", nodes, "a", "b")
			e.ImpersonatedUser = &audit.UserInfo{Username: "alice"}
			return e
		}(), true, "system:node:*", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustNew(t, tt.cfg).Evaluate(tt.give)
			if !got.Match {
				t.Fatalf("Evaluate(%q).Match = false, want true", tt.give.Username())
			}
			if got.Excluded != tt.excluded || got.By != tt.by {
				t.Errorf("Evaluate(%q) = excluded %v by %q, want %v by %q", tt.give.Username(), got.Excluded, got.By, tt.excluded, tt.by)
			}
			if tt.mismatch == "" && got.Mismatch != "" {
				t.Errorf("Evaluate(%q).Mismatch = %q, want none", tt.give.Username(), got.Mismatch)
			}
			if tt.mismatch != "" && !strings.Contains(got.Mismatch, tt.mismatch) {
				t.Errorf("Evaluate(%q).Mismatch = %q, want it to contain %q", tt.give.Username(), got.Mismatch, tt.mismatch)
			}
			if got.Alerts() == got.Excluded {
				t.Errorf("Alerts() = %v with Excluded %v", got.Alerts(), got.Excluded)
			}
		})
	}
}

func TestEvaluateNoMatch(t *testing.T) {
	base := func() *audit.Event { return mint("alice", nil, "a", "b") }
	tests := []struct {
		name string
		give func() *audit.Event
	}{
		{"missing user", func() *audit.Event { e := base(); e.User = nil; return e }},
		{"missing username", func() *audit.Event { e := base(); e.User.Username = ""; return e }},
		{"get", func() *audit.Event { e := base(); e.Verb = "get"; return e }},
		{"secret token subresource", func() *audit.Event { e := base(); e.ObjectRef.Resource = "secrets"; return e }},
		{"no subresource", func() *audit.Event { e := base(); e.ObjectRef.Subresource = ""; return e }},
		{"no objectRef", func() *audit.Event { e := base(); e.ObjectRef = nil; return e }},
		{"impersonated only", func() *audit.Event {
			e := base()
			e.User = nil
			e.ImpersonatedUser = &audit.UserInfo{Username: "alice"}
			return e
		}},
	}
	r := mustNew(t, DefaultConfig())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.Evaluate(tt.give()); got != (Verdict{}) {
				t.Errorf("Evaluate() = %+v, want no match", got)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		give Config
		want string // substring naming the field
	}{
		{"bad platform", Config{Platform: "eks"}, "exclusions.platform"},
		{"empty platform", Config{}, "exclusions.platform"},
		{"empty user", Config{Platform: PlatformAny, Add: []Pattern{{User: "a"}, {User: ""}}}, "exclusions.add[1].user"},
		{"empty namespace", Config{Platform: PlatformAny, Add: []Pattern{{User: "a", Namespaces: []string{""}}}}, "exclusions.add[0].namespaces[0]"},
		{"empty sa", Config{Platform: PlatformAny, Add: []Pattern{{User: "a", ServiceAccounts: []string{"x", ""}}}}, "exclusions.add[0].service_accounts[1]"},
		{"every user, any target", Config{Platform: PlatformAny, Add: []Pattern{{User: "a"}, {User: "*"}}}, "exclusions.add[1]: user \"*\" for any service account excludes every token request"},
		{"every user, targets that narrow nothing", Config{Platform: PlatformAny, Add: []Pattern{{User: "**", Namespaces: []string{"x", "*"}, ServiceAccounts: []string{"*"}}}}, "exclusions.add[0]: user \"**\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.give)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%+v) error = %v, want one naming %q", tt.give, err, tt.want)
			}
		})
	}
	if _, err := New(DefaultConfig()); err != nil {
		t.Errorf("New(DefaultConfig()) = %v", err)
	}
}

// TestExclusionWarnings: an added pattern matching every service account,
// for any target, is named; narrowed ones and the seed list are not, and
// a pattern that excludes everything is an error, not a warning.
func TestExclusionWarnings(t *testing.T) {
	cfg := Config{Platform: PlatformSelfManaged, Add: []Pattern{
		{User: "system:serviceaccount:vault:vault"},
		{User: "system:serviceaccount:*"},
		{User: "system:*", Namespaces: []string{"ci-*"}},
		{User: "system:*", ServiceAccounts: []string{"*"}},
	}}
	want := []string{
		`exclusions.add[1].user "system:serviceaccount:*" excludes the token requests of every service account, for any target: a stolen service-account token minting more goes unseen`,
		`exclusions.add[3].user "system:*" excludes the token requests of every service account, for any target: a stolen service-account token minting more goes unseen`,
	}
	if diff := cmp.Diff(want, cfg.Warnings()); diff != "" {
		t.Errorf("Warnings (-want +got):\n%s", diff)
	}
	if got := DefaultConfig().Warnings(); got != nil {
		t.Errorf("the defaults warn: %q", got)
	}
	if got := (Config{Add: []Pattern{{User: "*"}}}).Warnings(); got != nil {
		t.Errorf("an error is also a warning: %q", got)
	}
}

func TestWildcard(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything:at:all", true},
		{"a*", "a", true},
		{"a*", "ba", false},
		{"*a", "ba", true},
		{"*a", "ab", false},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"a*b*c", "abcbc", true},
		{"system:node:*", "system:node:x", true},
		{"system:node:*", "system:node", false},
		{"system:node:*", "System:Node:x", false},
		{"**", "x", true},
		{"a**a", "a", false},
		{"a*a", "aa", true},
		{strings.Repeat("*a", 30) + "b", strings.Repeat("a", 200), false},
	}
	for _, tt := range tests {
		if got := Wildcard(tt.pattern, tt.s); got != tt.want {
			t.Errorf("Wildcard(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

// FuzzWildcard checks Wildcard against a plain recursive definition.
func FuzzWildcard(f *testing.F) {
	f.Add("system:node:*", "system:node:x")
	f.Add("a*b*c", "abcbc")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if len(pattern) > 12 || len(s) > 24 {
			return
		}
		if got, want := Wildcard(pattern, s), naive(pattern, s); got != want {
			t.Errorf("Wildcard(%q, %q) = %v, want %v", pattern, s, got, want)
		}
	})
}

func naive(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if naive(p[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	return s != "" && p[0] == s[0] && naive(p[1:], s[1:])
}

func BenchmarkEvaluate(b *testing.B) {
	r, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	events := []*audit.Event{
		mint("system:node:cp-1", nodes, "team-a", "app"),
		mint("system:kube-controller-manager", nil, "kube-system", "x"),
		mint("system:serviceaccount:calico-system:calico-node", sa("calico-system"), "calico-system", "x"),
		mint("alice", nil, "team-a", "app"),
	}
	for b.Loop() {
		for _, e := range events {
			r.Evaluate(e)
		}
	}
}

func TestByDefault(t *testing.T) {
	vault := Pattern{User: "system:serviceaccount:kube-system:vault"}
	tests := []struct {
		name      string
		cfg       Config
		give      *audit.Event
		excluded  bool
		byDefault bool
	}{
		{"seed only", DefaultConfig(), mint("system:node:cp-1", nodes, "a", "b"), true, true},
		{"seed kube-system sa", DefaultConfig(), mint("system:serviceaccount:kube-system:x", sa("kube-system"), "a", "b"), true, true},
		{"added only", Config{Platform: PlatformAny, Add: []Pattern{{User: "vault"}}}, mint("vault", nil, "a", "b"), true, false},
		{"seed and added both exclude", Config{StrictGroups: true, Platform: PlatformSelfManaged, Add: []Pattern{vault}}, mint("system:serviceaccount:kube-system:vault", sa("kube-system"), "a", "b"), true, false},
		{"added narrowed elsewhere", Config{StrictGroups: true, Platform: PlatformSelfManaged, Add: []Pattern{{User: vault.User, Namespaces: []string{"other"}}}}, mint("system:serviceaccount:kube-system:vault", sa("kube-system"), "a", "b"), true, true},
		{"added wildcard covers seed", Config{Platform: PlatformAny, Add: []Pattern{{User: "system:*"}}}, mint("system:kube-scheduler", nil, "a", "b"), true, false},
		{"added repeats a seed pattern", Config{StrictGroups: true, Platform: PlatformSelfManaged, Add: []Pattern{{User: "system:node:*"}}}, mint("system:node:cp-1", nodes, "a", "b"), true, false},
		{"managed seed not applied, added excludes", Config{StrictGroups: true, Platform: PlatformSelfManaged, Add: []Pattern{{User: "eks:node-manager"}}}, mint("eks:node-manager", nil, "a", "b"), true, false},
		{"managed seed with platform any", seedExact, mint("eks:node-manager", nil, "a", "b"), true, true},
		{"replace defaults", Config{Platform: PlatformAny, ReplaceDefaults: true, Add: []Pattern{{User: "system:node:*"}}}, mint("system:node:cp-1", nodes, "a", "b"), true, false},
		{"not excluded", DefaultConfig(), mint("alice", nil, "a", "b"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustNew(t, tt.cfg).Evaluate(tt.give)
			if got.Excluded != tt.excluded || got.ByDefault != tt.byDefault {
				t.Errorf("Evaluate(%q) = excluded %v by default %v, want %v, %v", tt.give.Username(), got.Excluded, got.ByDefault, tt.excluded, tt.byDefault)
			}
		})
	}
}

func TestID(t *testing.T) {
	base := DefaultConfig()
	added := DefaultConfig()
	added.Add = []Pattern{{User: "ci-bot"}}
	narrowed := DefaultConfig()
	narrowed.Add = []Pattern{{User: "ci-bot", Namespaces: []string{"ci"}}}
	loose := DefaultConfig()
	loose.StrictGroups = false
	anyPlatform := DefaultConfig()
	anyPlatform.Platform = PlatformAny
	replaced := added
	replaced.ReplaceDefaults = true

	if a, b := mustNew(t, base).ID(), mustNew(t, DefaultConfig()).ID(); a != b || a == 0 {
		t.Errorf("ID of the same config = %d and %d, want equal and not 0", a, b)
	}
	seen := map[uint64]string{}
	for name, cfg := range map[string]Config{"default": base, "added": added, "narrowed": narrowed,
		"loose": loose, "any": anyPlatform, "replaced": replaced} {
		id := mustNew(t, cfg).ID()
		if other, ok := seen[id]; ok {
			t.Errorf("configs %s and %s have the same ID %d", name, other, id)
		}
		seen[id] = name
	}

	r := mustNew(t, added)
	if v := r.Evaluate(mint("ci-bot", nil, "a", "b")); v.Rule != r.ID() {
		t.Errorf("matching verdict's Rule = %d, want the rule's ID %d", v.Rule, r.ID())
	}
	if v := r.Evaluate(mint("mallory", nil, "a", "b")); v.Rule != r.ID() || !v.Alerts() {
		t.Errorf("alerting verdict = %+v, want Rule %d", v, r.ID())
	}
}
