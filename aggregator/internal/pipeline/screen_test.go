package pipeline

import (
	"testing"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/wire"
)

// TestScreenAgreesWithEvaluate: the wire-form screen decides as the rule
// does on the converted event.
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
		want int
	}{
		{"named user", completed("alice", "a1", rrt1, 201).event(), Keep},
		{"received stage", received("alice", "a2", rrt1).event(), Keep},
		{"node with its group", node.event(), DropExcluded},
		{"node without its group", nodeNoGroup.event(), Keep},
		{"service account with its group", kcm.event(), DropExcluded},
		{"service account without its group", kcmNoGroup.event(), Keep},
		{"controller manager", manager.event(), DropExcluded},
		{"managed identity, self-managed", eks.event(), Keep},
		{"added exclusion, target in scope", vault.event(), DropExcluded},
		{"added exclusion, target out of scope", vaultOther.event(), Keep},
		{"get, not create", func() *audit.Event { e := get.event(); e.Verb = "get"; return e }(), DropNotMatched},
		{"no username", noUser.event(), DropNotMatched},
		{"no user", func() *audit.Event { e := noUser.event(); e.User = nil; return e }(), DropNotMatched},
		{"secret token", func() *audit.Event { e := secret.event(); e.ObjectRef.Resource = "secrets"; return e }(), DropNotMatched},
		{"no objectRef", func() *audit.Event { e := secret.event(); e.ObjectRef = nil; return e }(), DropNotMatched},
	}
	cfg := config.Default()
	cfg.Exclusions.Add = []rule.Pattern{{User: "system:serviceaccount:vault:vault", Namespaces: []string{"team-*"}}}
	f := newFixture(t, cfg)
	r := f.p.rule.Load()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := f.p.Screen(wire.ToProto(tt.give)); got != tt.want {
				t.Errorf("Screen = %d, want %d", got, tt.want)
			}
			v := r.Evaluate(wire.FromProto(wire.ToProto(tt.give)))
			want := DropNotMatched
			switch {
			case v.Alerts():
				want = Keep
			case v.Excluded:
				want = DropExcluded
			}
			if want != tt.want {
				t.Errorf("Evaluate of the converted event says %d, the table %d", want, tt.want)
			}
		})
	}
	if got := f.p.Screen(nil); got != DropNotMatched {
		t.Errorf("Screen(nil) = %d, want DropNotMatched", got)
	}
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
