package lineage

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// use is one request of a scenario: made with token j1 (minted by alice
// from 10.0.0.1 in src1 at t0) unless jti says otherwise.
type use struct {
	src                Source
	ip                 string
	min                float64
	verb, resource, ns string
}

func (u use) event() *audit.Event {
	return useEvent("j1", saBuilder, u.ip, at(u.min), u.verb, u.resource, "", u.ns)
}

// got is what a scenario asserts about one use's record: "" when none,
// else "severity new=... all=...".
func summarizeUse(fx Effects) string {
	var parts []string
	for _, r := range fx.Records {
		if r.EventName != EventTokenUse {
			continue
		}
		p := fmt.Sprintf("%s new=%s all=%s", r.Severity.Text, attrStr(r, AttrNewReasons), attrStr(r, AttrReasons))
		if a := attrStr(r, AttrAction); a != "" {
			p += " action=" + a
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

func TestReasons(t *testing.T) {
	list := use{src1, "10.0.0.1", 1, "list", "pods", "team-a"}
	tests := []struct {
		name string
		uses []use
		want []string // per use
	}{
		{"first use", []use{list}, []string{"medium new=[first_use] all=[first_use]"}},
		{"same again: nothing", []use{list, list}, []string{"medium new=[first_use] all=[first_use]", ""}},
		{"other ip", []use{list, {src1, "10.0.0.2", 2, "list", "pods", "team-a"}}, []string{
			"medium new=[first_use] all=[first_use]",
			"high new=[source_ip_differs_from_mint new_source_ip] all=[source_ip_differs_from_mint new_source_ip]"}},
		{"third ip: new_source_ip only", []use{
			{src1, "10.0.0.2", 1, "list", "pods", "team-a"},
			{src1, "10.0.0.3", 2, "list", "pods", "team-a"},
			{src1, "10.0.0.3", 3, "list", "pods", "team-a"}}, []string{
			"high new=[first_use source_ip_differs_from_mint new_source_ip] all=[first_use source_ip_differs_from_mint new_source_ip]",
			"high new=[new_source_ip] all=[source_ip_differs_from_mint new_source_ip]",
			""}},
		{"back to the mint's ip", []use{
			{src1, "10.0.0.2", 1, "list", "pods", "team-a"}, list}, []string{
			"high new=[first_use source_ip_differs_from_mint new_source_ip] all=[first_use source_ip_differs_from_mint new_source_ip]",
			""}},
		{"other cluster", []use{list, {src2, "10.0.0.1", 2, "list", "pods", "team-a"}, {src2, "10.0.0.1", 3, "get", "pods", "team-b"}}, []string{
			"medium new=[first_use] all=[first_use]",
			"high new=[other_cluster] all=[other_cluster]",
			""}},
		{"sensitive action per namespace", []use{
			{src1, "10.0.0.1", 1, "get", "secrets", "team-a"},
			{src1, "10.0.0.1", 2, "list", "secrets", "team-a"},
			{src1, "10.0.0.1", 3, "list", "secrets", "team-b"}}, []string{
			"high new=[first_use sensitive_action] all=[first_use sensitive_action] action=secrets_read",
			"",
			"high new=[sensitive_action] all=[sensitive_action] action=secrets_read"}},
		{"sensitive action kinds", []use{
			{src1, "10.0.0.1", 1, "get", "secrets", "team-a"},
			{src1, "10.0.0.1", 2, "create", "pods/exec", "team-a"}}, []string{
			"high new=[first_use sensitive_action] all=[first_use sensitive_action] action=secrets_read",
			"high new=[sensitive_action] all=[sensitive_action] action=pod_exec"}},
		{"everything at once", []use{{src2, "192.0.2.7", 1, "get", "secrets", "kube-system"}}, []string{
			"high new=[first_use source_ip_differs_from_mint new_source_ip other_cluster sensitive_action] all=[first_use source_ip_differs_from_mint new_source_ip other_cluster sensitive_action] action=secrets_read"}},
		{"old reasons hold, severity high", []use{
			{src2, "192.0.2.7", 1, "list", "pods", "x"},
			{src2, "192.0.2.7", 2, "get", "secrets", "x"}}, []string{
			"high new=[first_use source_ip_differs_from_mint new_source_ip other_cluster] all=[first_use source_ip_differs_from_mint new_source_ip other_cluster]",
			"high new=[sensitive_action] all=[source_ip_differs_from_mint other_cluster sensitive_action] action=secrets_read"}},
		{"no source ip", []use{{src1, "", 1, "list", "pods", "team-a"}, {src1, "10.0.0.1", 2, "list", "pods", "team-a"}}, []string{
			"medium new=[first_use] all=[first_use]", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(DefaultConfig(), Hooks{})
			mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
			var got []string
			for _, u := range tt.uses {
				e := u.event()
				if u.ip == "" {
					e.SourceIPs = nil
				}
				if strings.Contains(u.resource, "/") {
					r, sub, _ := strings.Cut(u.resource, "/")
					e.ObjectRef.Resource, e.ObjectRef.Subresource = r, sub
				}
				got = append(got, summarizeUse(s.Use(at(u.min), u.src, e, []Kind{KindToken}, false)))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUseWindow: a use counts when its time lies in [mint, until] and the
// token is still held on the aggregator's clock (TTL + lookback after the
// mint reached it).
func TestUseWindow(t *testing.T) {
	tests := []struct {
		name    string
		useAt   float64 // event time, minutes after the mint
		nowAt   float64 // aggregator clock
		mintNow float64 // aggregator clock at the mint
		want    bool
	}{
		{"at mint", 0, 0, 0, true},
		{"before mint", -0.01, 1, 0, false},
		{"at until", 60, 60, 0, true},
		{"after until", 60.01, 60.01, 0, false},
		{"late within lookback", 59, 61.99, 0, true},
		{"at ttl + lookback: freed", 59, 62, 0, false},
		{"replay: mint reached the aggregator a day later", 30, 24*60 + 61, 24 * 60, true},
		{"replay: freed ttl + lookback after arrival", 30, 24*60 + 62, 24 * 60, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(DefaultConfig(), Hooks{})
			mustMint(t, s, at(tt.mintNow), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
			e := useEvent("j1", saBuilder, "10.0.0.1", at(tt.useAt), "list", "pods", "", "a")
			fx := s.Use(at(tt.nowAt), src1, e, nil, false)
			if got := len(fx.Records) == 1; got != tt.want {
				t.Errorf("use at %v (now %v) reported = %v, want %v", tt.useAt, tt.nowAt, got, tt.want)
			}
		})
	}
}

func TestFollow(t *testing.T) {
	skipSystem := func(user string) bool { return strings.HasPrefix(user, "system:kube-") }
	tests := []struct {
		name      string
		minter    string
		cred      string // the minter's credential JTI
		watchCred bool   // the credential is a watched token (a chain)
		want      []Watch
	}{
		{"user by name", "alice", "", false, []Watch{{KindActorUser, "alice", at(0), at(15)}}},
		{"service account by credential", saBuilder, "pod-tok", false, []Watch{{KindActorCredential, "pod-tok", at(0), at(15)}}},
		{"service account without token: not followed", saBuilder, "", false, nil},
		{"chain: not followed", saBuilder, "j0", true, nil},
		{"system name an exclusion matches", "system:kube-scheduler", "", false, nil},
		{"system name no exclusion matches", "system:anonymous", "", false, []Watch{{KindActorUser, "system:anonymous", at(0), at(15)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(DefaultConfig(), Hooks{SkipActor: skipSystem})
			if tt.watchCred {
				mustMint(t, s, at(0), src1, mintEvent(tt.cred, "bob", "10.0.0.9", at(0)))
			}
			e := mintEvent("j1", tt.minter, "10.0.0.1", at(0))
			if tt.cred != "" {
				e.User.Extra = map[string][]string{ExtraCredentialID: {"JTI=" + tt.cred}}
			}
			fx := mustMint(t, s, at(0), src1, e)
			var got []Watch
			for _, w := range fx.Add {
				if w.Kind != KindToken {
					got = append(got, w)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("actor watches (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFollowup(t *testing.T) {
	type req struct {
		user, cred         string
		min                float64
		verb, resource, ns string
		name               string
		src                Source
	}
	tests := []struct {
		name   string
		minter string
		cred   string
		reqs   []req
		want   []string // per request: the action reported, "" when none
	}{
		{"user's sensitive actions", "alice", "", []req{
			{"alice", "", 1, "get", "secrets", "a", "s1", src1},
			{"alice", "", 2, "get", "secrets", "a", "s1", src1},
			{"alice", "", 3, "get", "secrets", "a", "s2", src1},
			{"alice", "", 4, "get", "secrets", "a", "s1", src2},
			{"alice", "", 5, "list", "pods", "a", "", src1},
			{"bob", "", 6, "get", "secrets", "a", "s9", src1},
			{"alice", "", 7, "create", "serviceaccounts/token", "a", "x", src1},
		}, []string{"secrets_read", "", "secrets_read", "secrets_read", "", "", "token_mint"}},
		{"window edges", "alice", "", []req{
			{"alice", "", -0.01, "get", "secrets", "a", "s1", src1},
			{"alice", "", 0, "get", "secrets", "a", "s2", src1},
			{"alice", "", 15, "get", "secrets", "a", "s3", src1},
			{"alice", "", 15.01, "get", "secrets", "a", "s4", src1},
		}, []string{"", "secrets_read", "secrets_read", ""}},
		{"service account by its credential only", saBuilder, "pod-tok", []req{
			{saBuilder, "pod-tok", 1, "get", "secrets", "a", "s1", src1},
			{saBuilder, "other-pod", 2, "get", "secrets", "a", "s2", src1},
			{saBuilder, "", 3, "get", "secrets", "a", "s3", src1},
		}, []string{"secrets_read", "", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(DefaultConfig(), Hooks{})
			m := mintEvent("j1", tt.minter, "10.0.0.1", at(0))
			if tt.cred != "" {
				m.User.Extra = map[string][]string{ExtraCredentialID: {"JTI=" + tt.cred}}
			}
			mustMint(t, s, at(0), src1, m)
			var got []string
			for _, r := range tt.reqs {
				res, sub, _ := strings.Cut(r.resource, "/")
				e := useEvent(r.cred, r.user, "10.0.0.1", at(r.min), r.verb, res, sub, r.ns)
				e.ObjectRef.Name = r.name
				fx := s.Use(at(max(r.min, 0)), r.src, e, []Kind{KindActorUser, KindActorCredential}, false)
				var a []string
				for _, rec := range fx.Records {
					if rec.EventName != EventActorFollowup || rec.Severity != alert.High {
						t.Errorf("record %s %s, want an actor_followup at high", rec.EventName, rec.Severity.Text)
					}
					a = append(a, attrStr(rec, AttrAction))
				}
				got = append(got, strings.Join(a, ","))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("follow-ups (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFollowupWindows: a later mint opens a new window: the same action
// is reported once per window, with that window's mint.
func TestFollowupWindows(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	secret := func(min float64) *audit.Event {
		e := useEvent("", "alice", "10.0.0.1", at(min), "get", "secrets", "", "a")
		e.ObjectRef.Name = "s1"
		return e
	}
	if fx := s.Use(at(1), src1, secret(1), nil, false); len(fx.Records) != 1 || attrStr(fx.Records[0], "tokenwatch.lineage.jti") != "j1" {
		t.Fatalf("first window: %+v", fx.Records)
	}
	mustMint(t, s, at(10), src1, mintEvent("j2", "alice", "10.0.0.1", at(10)))
	if fx := s.Use(at(11), src1, secret(11), nil, false); len(fx.Records) != 1 || attrStr(fx.Records[0], "tokenwatch.lineage.jti") != "j2" {
		t.Fatalf("second window: %+v", fx.Records)
	}
	if fx := s.Use(at(12), src1, secret(12), nil, false); len(fx.Records) != 0 {
		t.Fatalf("second window again: %+v", fx.Records)
	}
	if fx := s.Use(at(12), src1, secret(5), nil, false); len(fx.Records) != 0 {
		t.Fatalf("late action of the first window: %+v", fx.Records)
	}
	if got := s.Watches(at(12)); len(got) != 3 || got[2] != (Watch{KindActorUser, "alice", at(0), at(25)}) {
		t.Errorf("Watches = %+v", got)
	}
}

func TestChain(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j0", "alice", "10.0.0.1", at(0)))
	hop := func(parent, jti string, min float64) *audit.Event {
		e := mintEvent(jti, saBuilder, "10.0.0.2", at(min))
		e.User.Extra = map[string][]string{ExtraCredentialID: {"JTI=" + parent}}
		return e
	}
	e1 := hop("j0", "j1", 1)
	c, ok := s.Chain(at(1), e1)
	if want := (Chain{ParentJTI: "j0", RootUser: "alice", Depth: 1}); !ok || c != want {
		t.Fatalf("Chain(j1) = %+v, %v, want %+v", c, ok, want)
	}
	fx := mustMint(t, s, at(1), src1, e1)
	if len(fx.Add) != 1 || fx.Add[0].Kind != KindToken {
		t.Errorf("chain mint adds %+v, want its token only", fx.Add)
	}
	e2 := hop("j1", "j2", 2)
	if c, ok := s.Chain(at(2), e2); !ok || c != (Chain{ParentJTI: "j1", RootUser: "alice", Depth: 2}) {
		t.Errorf("Chain(j2) = %+v, %v", c, ok)
	}
	if _, ok := s.Chain(at(2), mintEvent("j3", "bob", "10.0.0.3", at(2))); ok {
		t.Errorf("Chain of a mint without a token = true")
	}
	if _, ok := s.Chain(at(2), hop("unknown", "j4", 2)); ok {
		t.Errorf("Chain of an unwatched token = true")
	}
	if _, ok := s.Chain(at(61), hop("j0", "j5", 61)); ok {
		t.Errorf("Chain after the parent's until = true")
	}
	mustMint(t, s, at(2), src1, e2)
	fx = s.Use(at(3), src1, useEvent("j2", saBuilder, "10.0.0.1", at(3), "list", "pods", "", "a"), nil, false)
	if len(fx.Records) != 1 || attrStr(fx.Records[0], AttrDepth) != "2" || attrStr(fx.Records[0], AttrRootUser) != "alice" {
		t.Errorf("use of a chained token: %+v", fx.Records)
	}
	r := alert.Record{Severity: alert.Medium}
	c.Apply(&r)
	if r.Severity != alert.High || attrStr(r, AttrParentJTI) != "j0" || attrStr(r, AttrDepth) != "1" || attrStr(r, AttrRootUser) != "alice" {
		t.Errorf("Apply: %+v", r)
	}
}

func TestChainAlerts(t *testing.T) {
	tests := []struct {
		name string
		give rule.Verdict
		want bool
	}{
		{"no match", rule.Verdict{}, false},
		{"not excluded", rule.Verdict{Match: true}, true},
		{"default list", rule.Verdict{Match: true, Excluded: true, By: "system:serviceaccount:kube-system:*", ByDefault: true}, true},
		{"explicit add wins", rule.Verdict{Match: true, Excluded: true, By: "vault"}, false},
	}
	for _, tt := range tests {
		if got := (Chain{}).Alerts(tt.give); got != tt.want {
			t.Errorf("%s: Alerts(%+v) = %v, want %v", tt.name, tt.give, got, tt.want)
		}
	}
}

func TestKinds(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	mustMint(t, s, at(0), src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	e := useEvent("j1", saBuilder, "10.0.0.1", at(1), "list", "pods", "", "a")
	if fx := s.Use(at(1), src1, e, []Kind{KindActorUser}, false); len(fx.Records) != 0 {
		t.Errorf("matched as actor only: token records %+v", fx.Records)
	}
	if fx := s.Use(at(1), src1, e, []Kind{KindToken}, true); len(fx.Records) != 1 || attrStr(fx.Records[0], "tokenwatch.lineage.lookback") != "true" {
		t.Errorf("lookback use: %+v", fx.Records)
	}
}

func TestMintRetryAndNoJTI(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	e := mintEvent("j1", "alice", "10.0.0.1", at(0))
	mustMint(t, s, at(0), src1, e)
	if fx := mustMint(t, s, at(1), src1, e); len(fx.Add)+len(fx.Remove)+len(fx.Records) != 0 {
		t.Errorf("Mint again: %+v, want nothing", fx)
	}
	delete(e.Annotations, AnnotationIssuedCredentialID)
	if _, ok := s.MintOf(src1, e); ok {
		t.Errorf("MintOf without JTI = true")
	}
	e = mintEvent("j2", "alice", "10.0.0.1", at(0))
	e.RequestReceivedTimestamp, e.StageTimestamp = "", ""
	if _, ok := s.MintOf(src1, e); ok {
		t.Errorf("MintOf without time = true")
	}
}

func TestWatchAttrs(t *testing.T) {
	s := New(DefaultConfig(), Hooks{})
	e := mintEvent("j1", "alice", "10.0.0.1", at(0))
	sec := int64(3607)
	e.RequestObject = &audit.TokenRequest{Spec: audit.TokenRequestSpec{ExpirationSeconds: &sec}}
	m, _ := s.MintOf(src1, e)
	want := []alert.Attr{alert.String(AttrWatchUntil, "2026-11-28T23:00:00Z"), alert.Bool(AttrWatchCapped, true)}
	if diff := cmp.Diff(want, m.WatchAttrs()); diff != "" {
		t.Errorf("WatchAttrs (-want +got):\n%s", diff)
	}
}
