package lineage

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

func TestMintUseSummary(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	fx := mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	wantAdd := []Watch{
		{Kind: KindToken, Key: "j1", From: at(0), Until: at(60)},
		{Kind: KindActorUser, Key: "alice", From: at(0), Until: at(15)},
	}
	if diff := cmp.Diff(wantAdd, fx.Add); diff != "" {
		t.Errorf("Mint adds (-want +got):\n%s", diff)
	}
	fx = s.Use(at(1), src1, useEvent("j1", saBuilder, "10.0.0.1", at(1), "list", "pods", "", "team-a"), nil, false)
	if len(fx.Records) != 1 || attrStr(fx.Records[0], AttrNewReasons) != "[first_use]" || fx.Records[0].Severity != alert.Medium {
		t.Fatalf("first use records = %+v", fx.Records)
	}
	fx = s.Use(at(2), src1, useEvent("j1", saBuilder, "10.0.0.1", at(2), "list", "pods", "", "team-a"), nil, false)
	if len(fx.Records) != 0 {
		t.Fatalf("second use records = %+v, want none", fx.Records)
	}
	fx = s.Use(at(3), src2, useEvent("j1", saBuilder, "10.9.9.9", at(3), "get", "secrets", "", "kube-system"), nil, false)
	if len(fx.Records) != 1 || fx.Records[0].Severity != alert.High {
		t.Fatalf("other cluster records = %+v", fx.Records)
	}
	if got, want := attrStr(fx.Records[0], AttrNewReasons), "[source_ip_differs_from_mint new_source_ip other_cluster sensitive_action]"; got != want {
		t.Errorf("new reasons = %s, want %s", got, want)
	}
	fx = s.Tick(at(10))
	if got := eventNames(fx.Records); !cmp.Equal(got, []string{EventTokenUseSummary}) {
		t.Fatalf("Tick records = %v", got)
	}
	if got := attrStr(fx.Records[0], "tokenwatch.lineage.uses"); got != "3" {
		t.Errorf("uses = %s, want 3", got)
	}
	if got := len(s.Watches(at(10))); got != 2 {
		t.Errorf("Watches = %d, want 2", got)
	}
	s.Tick(at(62))
	if got := s.Watches(at(62)); len(got) != 0 {
		t.Errorf("Watches after expiry = %+v, want none", got)
	}
}

func TestRoundTrip(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	s.Use(at(1), src1, useEvent("j1", saBuilder, "10.0.0.1", at(1), "list", "pods", "", "team-a"), nil, false)
	put, del, err := s.Changes()
	if err != nil || len(put) != 2 || len(del) != 0 {
		t.Fatalf("Changes() = %d puts, %v, %v", len(put), del, err)
	}
	r := New(DefaultConfig(), Hooks{})
	if err := r.Load(put); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s.Watches(at(2)), r.Watches(at(2))); diff != "" {
		t.Errorf("Watches after Load (-orig +loaded):\n%s", diff)
	}
	e := useEvent("j1", saBuilder, "10.0.0.1", at(2), "list", "pods", "", "team-a")
	if a, b := s.Use(at(2), src1, e, nil, false), r.Use(at(2), src1, e, nil, false); !cmp.Equal(a, b) {
		t.Errorf("Use after Load differs:\n%s", cmp.Diff(a, b))
	}
	if a, b := s.Tick(at(10)), r.Tick(at(10)); !cmp.Equal(a, b) {
		t.Errorf("Tick after Load differs:\n%s", cmp.Diff(a, b))
	}
}
