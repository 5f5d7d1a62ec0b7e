package linematch

import (
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
)

const (
	jtiA = "832496d6-e170-47c8-93f8-db734a6d468b"
	jtiB = "0b1c2d3e-aaaa-4bbb-8ccc-000000000001"
)

var (
	t0 = time.Date(2026, 11, 26, 23, 9, 16, 0, time.UTC)
	t1 = t0.Add(time.Hour)
)

// ev builds an event: a get of a configmap by user, with the credential id
// cred ("" for none) received at ts.
func ev(user, cred, ts string, opts ...func(*audit.Event)) *audit.Event {
	e := &audit.Event{
		Verb:                     "get",
		User:                     &audit.UserInfo{Username: user},
		ObjectRef:                &audit.ObjectReference{Resource: "configmaps", Namespace: "team-a", Name: "x", APIVersion: "v1"},
		RequestReceivedTimestamp: ts,
	}
	if cred != "" {
		e.User.Extra = map[string][]string{lineage.ExtraCredentialID: {cred}}
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

func secretsGet(e *audit.Event) { e.ObjectRef.Resource = "secrets" }

func tokenCreate(e *audit.Event) {
	e.Verb = "create"
	e.ObjectRef.Resource, e.ObjectRef.Subresource = "serviceaccounts", "token"
}

func legacy(v string) func(*audit.Event) {
	return func(e *audit.Event) {
		e.Annotations = map[string]string{lineage.AnnotationLegacyToken: v}
	}
}

func impersonating(e *audit.Event) { e.ImpersonatedUser = &audit.UserInfo{Username: "bob"} }

func watchSet(tb testing.TB, ws ...Watch) *Set {
	tb.Helper()
	s := &Set{}
	for _, w := range ws {
		if err := s.Add(w); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

func TestClassify(t *testing.T) {
	in := "2026-11-26T23:39:16.000000Z"
	s := watchSet(t,
		Watch{Kind: Token, Key: jtiA, From: t0, Until: t1},
		Watch{Kind: ActorUser, Key: "alice", From: t0, Until: t1},
		Watch{Kind: ActorCredential, Key: jtiB, From: t0, Until: t1},
		Watch{Kind: Token, Key: "not-a-uuid"},
	)
	tests := []struct {
		name string
		give *audit.Event
		set  *Set
		want Kind
	}{
		{"watched token", ev("system:serviceaccount:a:b", "JTI="+jtiA, in), s, Token},
		{"watched token, upper-case hex", ev("u", "JTI=832496D6-E170-47C8-93F8-DB734A6D468B", in), s, Token},
		{"watched token, sensitive action too", ev("u", "JTI="+jtiA, in, secretsGet), s, Token},
		{"unwatched token", ev("u", "JTI="+jtiB, in), s, 0},
		{"token watched by a non-uuid key", ev("u", "JTI=not-a-uuid", "bogus"), s, Token},
		{"x509 credential is no token", ev("u", "X509SHA256="+jtiA, in), s, 0},
		{"jti in another extra key", ev("u", "", in, func(e *audit.Event) {
			e.User.Extra = map[string][]string{"authentication.kubernetes.io/pod-name": {"JTI=" + jtiA}}
		}), s, 0},
		{"impersonated user's credential", ev("u", "", in, func(e *audit.Event) {
			e.ImpersonatedUser = &audit.UserInfo{Extra: map[string][]string{lineage.ExtraCredentialID: {"JTI=" + jtiA}}}
		}), s, 0},
		{"from is included", ev("u", "JTI="+jtiA, "2026-11-26T23:09:16.000000Z"), s, Token},
		{"until is included", ev("u", "JTI="+jtiA, "2026-11-27T00:09:16.000000Z"), s, Token},
		{"a microsecond before from", ev("u", "JTI="+jtiA, "2026-11-26T23:09:15.999999Z"), s, 0},
		{"a microsecond after until", ev("u", "JTI="+jtiA, "2026-11-27T00:09:16.000001Z"), s, 0},
		{"other zone, within", ev("u", "JTI="+jtiA, "2026-11-27T00:39:16.000000+01:00"), s, Token},
		{"unparsable time counts as within", ev("u", "JTI="+jtiA, "yesterday"), s, Token},
		{"absent time counts as within", ev("u", "JTI="+jtiA, ""), s, Token},
		{"token create with a watched token", ev("u", "JTI="+jtiA, in, tokenCreate), s, 0},
		{"token create by a followed actor", ev("alice", "", in, tokenCreate), s, 0},
		{"followed user, sensitive", ev("alice", "", in, secretsGet), s, ActorUser},
		{"followed user, impersonating", ev("alice", "", in, impersonating), s, ActorUser},
		{"followed user, not sensitive", ev("alice", "", in), s, 0},
		{"followed user, out of bounds", ev("alice", "", "2026-11-27T01:00:00Z", secretsGet), s, 0},
		{"other user, sensitive", ev("mallory", "", in, secretsGet), s, 0},
		{"user name differs in case", ev("Alice", "", in, secretsGet), s, 0},
		{"followed credential, sensitive", ev("system:serviceaccount:a:b", "JTI="+jtiB, in, secretsGet), s, ActorCredential},
		{"followed credential, not sensitive", ev("system:serviceaccount:a:b", "JTI="+jtiB, in), s, 0},
		{"followed user and credential", ev("alice", "JTI="+jtiB, in, secretsGet), s, ActorUser | ActorCredential},
		{"token and credential", ev("alice", "JTI="+jtiA, in, secretsGet), watchSet(t,
			Watch{Kind: Token, Key: jtiA}, Watch{Kind: ActorCredential, Key: jtiA}, Watch{Kind: ActorUser, Key: "alice"}),
			Token | ActorUser | ActorCredential},
		{"legacy", ev("system:serviceaccount:ns:sa", "", in, legacy("system:serviceaccount:ns:sa")), nil, Legacy},
		{"legacy and watched", ev("u", "JTI="+jtiA, in, legacy("system:serviceaccount:ns:sa")), s, Legacy | Token},
		{"legacy annotation empty", ev("u", "", in, legacy("")), s, 0},
		{"legacy annotation not a service account", ev("u", "", in, legacy("alice")), s, 0},
		{"legacy token create", ev("u", "", in, tokenCreate, legacy("system:serviceaccount:ns:sa")), s, 0},
		{"no user", &audit.Event{Verb: "get", RequestReceivedTimestamp: in}, s, 0},
		{"nil event", nil, s, 0},
		{"empty set", ev("alice", "JTI="+jtiA, in, secretsGet), &Set{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.give, tt.set); got != tt.want {
				t.Errorf("Classify(%+v) = %v, want %v", tt.give, got, tt.want)
			}
		})
	}
}

func TestSet(t *testing.T) {
	var s Set
	for _, w := range []Watch{
		{Kind: Token, Key: jtiA, From: t0, Until: t0.Add(time.Minute)},
		{Kind: Token, Key: jtiA, From: t0.Add(time.Minute), Until: t1}, // extends
		{Kind: Token, Key: "odd"},
		{Kind: ActorCredential, Key: jtiB, Until: t0},
		{Kind: ActorUser, Key: "alice", Until: t1},
	} {
		if err := s.Add(w); err != nil {
			t.Fatalf("Add(%+v) = %v", w, err)
		}
	}
	for _, w := range []Watch{{Kind: Token}, {Kind: Legacy, Key: "x"}, {Kind: Token | ActorUser, Key: "x"}, {Kind: ActorUser, Key: string(make([]byte, MaxKeyLen+1))}} {
		if err := s.Add(w); err == nil {
			t.Errorf("Add(kind %v, key of %d bytes) = nil, want an error", w.Kind, len(w.Key))
		}
	}
	if got := [3]int{s.Len(Token), s.Len(ActorUser), s.Len(ActorCredential)}; got != [3]int{2, 1, 1} {
		t.Fatalf("Len = %v, want [2 1 1]", got)
	}
	mid := "2026-11-26T23:39:16Z"
	if got := Classify(ev("u", "JTI="+jtiA, mid), &s); got != Token {
		t.Errorf("extended watch: Classify = %v, want token", got)
	}
	if n := s.Expire(t0.Add(time.Second)); n != 1 || s.Len(ActorCredential) != 0 {
		t.Errorf("Expire = %d (credentials left %d), want 1 (0)", n, s.Len(ActorCredential))
	}
	s.Remove(Token, "odd")
	s.Remove(ActorUser, "alice")
	if s.Len(Token|ActorUser) != 1 {
		t.Errorf("after Remove: Len = %d, want 1", s.Len(Token|ActorUser))
	}
	if n := s.Expire(t1.Add(time.Nanosecond)); n != 1 || s.Len(Token|ActorUser|ActorCredential) != 0 {
		t.Errorf("Expire = %d, left %d; want 1, 0", n, s.Len(Token|ActorUser|ActorCredential))
	}
	s.Add(Watch{Kind: ActorUser, Key: "bob"})
	s.Reset()
	if s.Len(Token|ActorUser|ActorCredential) != 0 {
		t.Error("Reset left watches")
	}
}

func TestParseUUID(t *testing.T) {
	tests := []struct {
		give string
		ok   bool
	}{
		{jtiA, true},
		{"832496D6-E170-47C8-93F8-DB734A6D468B", true},
		{"832496d6-e170-47c8-93f8-db734a6d468", false},
		{"832496d6e170-47c8-93f8-db734a6d468bb", false},
		{"832496d6-e170-47c8-93f8-db734a6d468g", false},
		{"", false},
	}
	for _, tt := range tests {
		id, ok := parseUUID(tt.give)
		if ok != tt.ok {
			t.Errorf("parseUUID(%q) = %x, %v; want ok %v", tt.give, id, ok, tt.ok)
		}
	}
	id, _ := parseUUID(jtiA)
	if id2, _ := parseUUID("832496D6-E170-47C8-93F8-DB734A6D468B"); id != id2 || id[0] != 0x83 || id[15] != 0x8b {
		t.Errorf("parseUUID: %x and %x", id, id2)
	}
}
