package pipeline

import (
	"testing"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/wire"
)

// TestScreenAgreesWithEvaluate: the screen of the wire form's subject
// decides as the rule does on the converted event.
func TestScreenAgreesWithEvaluate(t *testing.T) {
	node := completed("system:node:cp-1", "n1", rrt1, 201)
	node.groups = []string{"system:nodes", "system:authenticated"}
	nodeNoGroup := completed("system:node:cp-1", "n2", rrt1, 201)
	kcm := completed("system:serviceaccount:kube-system:replicaset-controller", "k1", rrt1, 201)
	kcm.groups = []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}
	kcmNoGroup := completed("system:serviceaccount:kube-system:replicaset-controller", "k2", rrt1, 201)
	manager := completed("system:kube-controller-manager", "m1", rrt1, 201)
	eks := completed("eks:node-manager", "e1", rrt1, 201)
	vault := completed("system:serviceaccount:vault:vault", "v1", rrt1, 201)
	vault.ns = "team-a"
	vault.groups = []string{"system:serviceaccounts:vault"}
	vaultOther := completed("system:serviceaccount:vault:vault", "v2", rrt1, 201)
	vaultOther.ns = "prod"
	vaultOther.groups = vault.groups
	get := completed("alice", "g1", rrt1, 200)
	noUser := completed("", "u1", rrt1, 201)
	secret := completed("alice", "s1", rrt1, 201)

	tests := []struct {
		name string
		give *audit.Event
		want string
	}{
		{"named user", completed("alice", "a1", rrt1, 201).event(), "keep"},
		{"received stage", received("alice", "a2", rrt1).event(), "keep"},
		{"node with its group", node.event(), "excluded"},
		{"node without its group", nodeNoGroup.event(), "keep"},
		{"service account with its group", kcm.event(), "excluded"},
		{"service account without its group", kcmNoGroup.event(), "keep"},
		{"controller manager", manager.event(), "excluded"},
		{"managed identity, self-managed", eks.event(), "keep"},
		{"added exclusion, target in scope", vault.event(), "excluded"},
		{"added exclusion, target out of scope", vaultOther.event(), "keep"},
		{"get, not create", func() *audit.Event { e := get.event(); e.Verb = "get"; return e }(), "not matched"},
		{"no username", noUser.event(), "not matched"},
		{"no user", func() *audit.Event { e := noUser.event(); e.User = nil; return e }(), "not matched"},
		{"secret token", func() *audit.Event { e := secret.event(); e.ObjectRef.Resource = "secrets"; return e }(), "not matched"},
		{"no objectRef", func() *audit.Event { e := secret.event(); e.ObjectRef = nil; return e }(), "not matched"},
	}
	cfg := config.Default()
	cfg.Exclusions.Add = []rule.Pattern{{User: "system:serviceaccount:vault:vault", Namespaces: []string{"team-*"}}}
	f := newFixture(t, cfg)
	r := f.p.rule.Load()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := wire.Subject(wire.ToProto(tt.give))
			if got := kind(f.p.Screen(&s)); got != tt.want {
				t.Errorf("Screen = %s, want %s", got, tt.want)
			}
			if want := kind(r.Evaluate(wire.FromProto(wire.ToProto(tt.give)))); want != tt.want {
				t.Errorf("Evaluate of the converted event says %s, the table %s", want, tt.want)
			}
		})
	}
	if got := kind(f.p.Screen(nil)); got != "not matched" {
		t.Errorf("Screen(nil) = %s, want not matched", got)
	}
}

// kind names what a verdict does to an event on its way in.
func kind(v rule.Verdict) string {
	switch {
	case v.Alerts():
		return "keep"
	case v.Excluded:
		return "excluded"
	}
	return "not matched"
}

// TestProcessCountsScreened: events screened out still show in the result.
func TestProcessCountsScreened(t *testing.T) {
	f := newFixture(t, config.Default())
	b := batch("prod", "cp-1", completed("alice", "a1", rrt1, 201))
	b.Excluded, b.NotMatched = 7, 2
	res := f.process(t, b)
	if res.Excluded != 7 || res.NotMatched != 2 || res.Alerted != 1 {
		t.Errorf("Process = %+v, want Excluded 7, NotMatched 2, Alerted 1", res)
	}
}
