package lineage

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func TestWatchFull(t *testing.T) {
	type mint struct{ jti, user string }
	tests := []struct {
		name    string
		max     int
		mints   []mint
		removed []string // JTIs dropped, in order
		kept    []string
	}{
		{"under the limit", 3, []mint{{"a1", "alice"}, {"b1", "bob"}, {"a2", "alice"}}, nil, []string{"a1", "a2", "b1"}},
		{"the minter holding most loses its oldest", 3, []mint{{"a1", "alice"}, {"a2", "alice"}, {"b1", "bob"}, {"c1", "carol"}}, []string{"a1"}, []string{"a2", "b1", "c1"}},
		{"a flooding minter evicts only itself", 3, []mint{{"a1", "alice"}, {"b1", "bob"}, {"m1", "mallory"}, {"m2", "mallory"}, {"m3", "mallory"}}, []string{"m1", "m2"}, []string{"a1", "b1", "m3"}},
		{"a tie: the minter minting loses its own", 2, []mint{{"a1", "alice"}, {"b1", "bob"}, {"c1", "carol"}}, []string{"c1"}, []string{"a1", "b1"}},
		{"a tie with the minter minting: its own oldest", 3, []mint{{"a1", "alice"}, {"a2", "alice"}, {"b1", "bob"}, {"b2", "bob"}}, []string{"b1"}, []string{"a1", "a2", "b2"}},
		{"a tie between others: by name", 4, []mint{{"a1", "alice"}, {"a2", "alice"}, {"b1", "bob"}, {"b2", "bob"}, {"c1", "carol"}}, []string{"a1"}, []string{"a2", "b1", "b2", "c1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.MaxWatched = tt.max
			s := New(cfg, Hooks{})
			var removed []string
			for i, m := range tt.mints {
				fx := mustMint(t, s, at(float64(i)), src1, mintEvent(m.jti, m.user, "10.0.0.1", at(float64(i))))
				for _, w := range fx.Remove {
					removed = append(removed, w.Key)
				}
				for _, w := range fx.Add {
					if w.Kind == KindToken && w.Key != m.jti {
						t.Errorf("Mint(%s) adds watch %s", m.jti, w.Key)
					}
				}
			}
			if len(removed) > 0 && removed[len(removed)-1] == tt.mints[len(tt.mints)-1].jti {
				removed = removed[:len(removed)-1] // dropped at once: never added
			}
			var kept []string
			for _, w := range s.Watches(at(10)) {
				if w.Kind == KindToken {
					kept = append(kept, w.Key)
				}
			}
			if diff := cmp.Diff(tt.kept, kept); diff != "" {
				t.Errorf("kept (-want +got):\n%s", diff)
			}
			if !strings.HasPrefix(strings.Join(tt.removed, ","), strings.Join(removed, ",")) {
				t.Errorf("removed %v, want %v", removed, tt.removed)
			}
			fx := s.Tick(at(10))
			var full []alert.Record
			for _, r := range fx.Records {
				if r.EventName == alert.EventPipeline {
					full = append(full, r)
				}
			}
			if len(tt.removed) == 0 {
				if len(full) != 0 {
					t.Errorf("pipeline records %+v, want none", full)
				}
				return
			}
			if len(full) != 1 || attrStr(full[0], "tokenwatch.pipeline.kind") != PipelineWatchFull ||
				attrStr(full[0], "tokenwatch.lineage.dropped") != fmt.Sprint(len(tt.removed)) {
				t.Errorf("pipeline records %+v, want one lineage_watch_full of %d", full, len(tt.removed))
			}
		})
	}
}

// TestWatchFullNoAddRemovePair: a watch dropped by the mint that made it
// is neither added nor removed.
func TestWatchFullNoAddRemovePair(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxWatched = 1
	s := New(cfg, Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("a1", "alice", "10.0.0.1", at(0)))
	fx := mustMint(t, s, at(1), src1, mintEvent("b1", "bob", "10.0.0.1", at(1)))
	for _, w := range fx.Add {
		if w.Kind == KindToken {
			t.Errorf("Add %+v, want no token watch", w)
		}
	}
	if len(fx.Remove) != 0 {
		t.Errorf("Remove %+v, want none", fx.Remove)
	}
}

func TestSummaryIntervals(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	u := func(min float64, src Source, ip, verb, res, ns string, code int32) {
		e := useEvent("j1", saBuilder, ip, at(min), verb, res, "", ns)
		e.ResponseStatus.Code = code
		s.Use(at(min), src, e, nil, false)
	}
	u(1, src1, "10.0.0.1", "list", "secrets", "kube-system", 200)
	u(2, src1, "10.0.0.1", "list", "secrets", "kube-system", 200)
	u(3, src2, "10.0.0.2", "get", "pods", "a", 403)
	s.Count(at(4), src1, Count{Kind: KindToken, Key: "j1", Uses: 5, Verbs: map[string]uint64{"list secrets kube-system": 5},
		SourceIPs: []string{"10.0.0.3"}, Codes: map[string]uint64{"200": 5}, First: at(3.5), Last: at(4)})
	if fx := s.Tick(at(9.99)); len(fx.Records) != 0 {
		t.Fatalf("Tick before the interval's end: %+v", fx.Records)
	}
	fx := s.Tick(at(10))
	if len(fx.Records) != 1 {
		t.Fatalf("Tick at the end: %d records", len(fx.Records))
	}
	r := fx.Records[0]
	want := map[string]string{
		"tokenwatch.lineage.uses":       "8",
		"tokenwatch.lineage.source_ips": "[10.0.0.1 10.0.0.2 10.0.0.3]",
		"k8s.cluster.names":             "[prod-eu prod-us]",
		"tokenwatch.lineage.verbs":      "[list secrets kube-system=7 get pods a=1]",
		"tokenwatch.lineage.outcomes":   "[200=7 403=1]",
		"tokenwatch.lineage.first_use":  ts(at(1)),
		"tokenwatch.lineage.last_use":   ts(at(4)),
	}
	for k, v := range want {
		if got := attrStr(r, k); got != v {
			t.Errorf("%s = %s, want %s", k, got, v)
		}
	}
	if r.Severity != alert.Low || !r.Time.Equal(at(10)) {
		t.Errorf("summary severity %v time %v", r.Severity, r.Time)
	}
	if fx := s.Tick(at(20)); len(fx.Records) != 0 {
		t.Errorf("Tick of an interval without use: %+v", fx.Records)
	}
	// A use in a later interval closes the one still open.
	u(21, src1, "10.0.0.1", "list", "pods", "a", 200)
	u(31, src1, "10.0.0.1", "list", "pods", "a", 200)
	if fx := s.Use(at(31), src1, useEvent("j1", saBuilder, "10.0.0.1", at(31), "list", "pods", "", "a"), nil, false); len(fx.Records) != 0 {
		t.Errorf("third use: %+v", fx.Records)
	}
}

func TestSummaryClosedByNextInterval(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	s.Use(at(1), src1, useEvent("j1", saBuilder, "10.0.0.1", at(1), "list", "pods", "", "a"), nil, false)
	fx := s.Use(at(11), src1, useEvent("j1", saBuilder, "10.0.0.1", at(11), "list", "pods", "", "a"), nil, false)
	if got := eventNames(fx.Records); !cmp.Equal(got, []string{EventTokenUseSummary}) {
		t.Fatalf("use in the next interval: %v, want the previous summary", got)
	}
	if got := attrStr(fx.Records[0], "tokenwatch.lineage.interval.start"); got != ts(at(0)) {
		t.Errorf("interval.start = %s", got)
	}
}

func TestFreedTokenEmitsItsSummary(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	e := mintEvent("j1", "alice", "10.0.0.1", at(0))
	sec := int64(600)
	e.RequestObject = &audit.TokenRequest{Spec: audit.TokenRequestSpec{ExpirationSeconds: &sec}}
	mustMint(t, s, at(0), src1, e)
	s.Use(at(10.5), src1, useEvent("j1", saBuilder, "10.0.0.1", at(10), "list", "pods", "", "a"), nil, false)
	fx := s.Tick(at(12))
	if got := eventNames(fx.Records); !cmp.Equal(got, []string{EventTokenUseSummary}) || !fx.Records[0].Time.Equal(at(12)) {
		t.Fatalf("Tick freeing the token: %v", fx.Records)
	}
	if s.Len() != 0 {
		t.Errorf("Len() = %d after expiry", s.Len())
	}
}

func TestLegacy(t *testing.T) {
	const sa = "system:serviceaccount:ci:deployer"
	skip := func(cluster, s string) bool { return s == "system:serviceaccount:vault:vault" }
	legacyEv := func(sa, ip string, min float64, code int32) *audit.Event {
		e := useEvent("", sa, ip, at(min), "get", "secrets", "", "ci")
		e.Annotations = map[string]string{AnnotationLegacyToken: sa}
		e.ResponseStatus.Code = code
		return e
	}
	s := New(DefaultConfig(), Hooks{SkipLegacy: skip})
	s.Use(at(1), src1, legacyEv(sa, "10.0.0.5", 1, 200), []Kind{KindLegacy}, false)
	s.Use(at(2), src1, legacyEv(sa, "10.0.0.6", 2, 401), []Kind{KindLegacy}, false)
	s.Use(at(2), src2, legacyEv(sa, "10.0.0.6", 2, 200), []Kind{KindLegacy}, false)
	s.Use(at(2), src1, legacyEv("system:serviceaccount:vault:vault", "10.0.0.6", 2, 200), []Kind{KindLegacy}, false)
	s.Use(at(2), src1, legacyEv(sa, "10.0.0.6", 2, 200), []Kind{KindActorUser}, false)
	s.Count(at(3), src1, Count{Kind: KindLegacy, Key: sa, Uses: 3, Codes: map[string]uint64{"200": 3}, Verbs: map[string]uint64{"list pods ci": 3}, User: sa})
	s.Count(at(3), src1, Count{Kind: KindLegacy, Key: "system:serviceaccount:vault:vault", Uses: 3})
	fx := s.Tick(at(10))
	var got []string
	for _, r := range fx.Records {
		if r.EventName != EventLegacyTokenUse || r.Severity != alert.Medium {
			t.Errorf("record %s %v", r.EventName, r.Severity)
		}
		got = append(got, fmt.Sprintf("%s %s uses=%s ips=%s outcomes=%s",
			attrStr(r, "k8s.cluster.name"), attrStr(r, "user.name"), attrStr(r, "tokenwatch.lineage.uses"),
			attrStr(r, "tokenwatch.lineage.source_ips"), attrStr(r, "tokenwatch.lineage.outcomes")))
	}
	want := []string{
		"prod-eu system:serviceaccount:ci:deployer uses=5 ips=[10.0.0.5 10.0.0.6] outcomes=[200=4 401=1]",
		"prod-us system:serviceaccount:ci:deployer uses=1 ips=[10.0.0.6] outcomes=[200=1]",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("legacy records (-want +got):\n%s", diff)
	}
	if fx := s.Tick(at(20)); len(fx.Records) != 0 {
		t.Errorf("second Tick: %+v", fx.Records)
	}
}

func TestCountUnwatched(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	s.Count(at(1), src1, Count{Kind: KindToken, Key: "nope", Uses: 3})
	s.Count(at(1), src1, Count{Kind: KindLegacy, Key: "alice", Uses: 3})
	if fx := s.Tick(at(10)); len(fx.Records) != 0 {
		t.Errorf("records of unwatched counts: %+v", fx.Records)
	}
	if put, del, _ := s.Changes(); len(put)+len(del) != 0 {
		t.Errorf("Changes() = %v, %v, want none", put, del)
	}
}

func TestArraysCut(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	for i := range 150 {
		ip := fmt.Sprintf("10.1.%d.%d", i/256, i%256)
		s.Use(at(1), src1, useEvent("j1", saBuilder, ip, at(1), "get", "pods", "", fmt.Sprintf("ns-%03d", i)), nil, false)
	}
	r := s.Tick(at(10)).Records[0]
	v, _ := r.Attr("tokenwatch.lineage.source_ips")
	if len(v.Strings) != maxArray || attrStr(r, "tokenwatch.lineage.source_ips.count") != "150" {
		t.Errorf("source_ips: %d entries, count %s", len(v.Strings), attrStr(r, "tokenwatch.lineage.source_ips.count"))
	}
	if attrStr(r, "tokenwatch.lineage.verbs.count") != "150" {
		t.Errorf("verbs.count = %s", attrStr(r, "tokenwatch.lineage.verbs.count"))
	}
	if _, ok := r.Attr("k8s.cluster.names.count"); ok {
		t.Errorf("k8s.cluster.names.count present for one cluster")
	}
}

func TestDisabled(t *testing.T) {
	on := New(DefaultConfig(), Hooks{})
	mustMint(t, on, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	on.Use(at(1), src1, useEvent("j1", saBuilder, "10.0.0.1", at(1), "list", "pods", "", "a"), nil, false)
	put, _, _ := on.Changes()

	cfg := DefaultConfig()
	cfg.Enabled = false
	s := New(cfg, Hooks{})
	if err := s.Load(put); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.MintOf(src1, mintEvent("j2", "alice", "10.0.0.1", at(2))); ok {
		t.Errorf("MintOf when off = true")
	}
	if fx := s.Mint(at(2), Mint{JTI: "j2", User: "bob", Time: at(2), Until: at(62)}); len(fx.Add) != 0 {
		t.Errorf("Mint when off adds %+v", fx.Add)
	}
	if _, ok := s.Chain(at(2), func() *audit.Event {
		e := mintEvent("j3", saBuilder, "10.0.0.1", at(2))
		e.User.Extra = map[string][]string{ExtraCredentialID: {"JTI=j1"}}
		return e
	}()); ok {
		t.Errorf("Chain when off = true")
	}
	if fx := s.Use(at(2), src1, useEvent("j1", saBuilder, "10.9.9.9", at(2), "get", "secrets", "", "a"), nil, false); len(fx.Records) != 0 {
		t.Errorf("Use when off: %+v", fx.Records)
	}
	if w := s.Watches(at(2)); len(w) != 0 {
		t.Errorf("Watches when off: %+v", w)
	}
	if fx := s.Tick(at(10)); len(fx.Records) != 0 {
		t.Errorf("Tick when off: %+v", fx.Records)
	}
	if s.Len() != 1 {
		t.Errorf("stored token dropped before it expired")
	}
	s.Tick(at(63))
	if s.Len() != 0 {
		t.Errorf("stored token kept after it expired")
	}
}
