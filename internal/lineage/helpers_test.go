package lineage

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// t0 is the mint time of the tests; the aggregator's clock follows event
// time closely unless a test says otherwise.
var t0 = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)

func at(m float64) time.Time { return t0.Add(time.Duration(m * float64(time.Minute))) }

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

var src1 = Source{Cluster: "prod-eu", Node: "cp-1"}
var src2 = Source{Cluster: "prod-us", Node: "cp-9"}

// mintEvent is a token request by user from ip at t that issued jti.
func mintEvent(jti, user, ip string, t time.Time) *audit.Event {
	return &audit.Event{
		AuditID: "mint-" + jti, Stage: audit.StageResponseComplete, Verb: "create",
		RequestURI:               "/api/v1/namespaces/team-a/serviceaccounts/builder/token",
		User:                     &audit.UserInfo{Username: user, Groups: []string{"system:authenticated"}},
		SourceIPs:                []string{ip},
		ObjectRef:                &audit.ObjectReference{Resource: "serviceaccounts", Subresource: "token", Namespace: "team-a", Name: "builder"},
		ResponseStatus:           &audit.Status{Code: 201},
		RequestReceivedTimestamp: ts(t), StageTimestamp: ts(t),
		Annotations: map[string]string{AnnotationIssuedCredentialID: "JTI=" + jti},
	}
}

var reqSeq int

// useEvent is a request made with token jti (no token when jti is "").
func useEvent(jti, user, ip string, t time.Time, verb, resource, sub, ns string) *audit.Event {
	reqSeq++
	e := &audit.Event{
		AuditID: fmt.Sprintf("req-%d", reqSeq), Stage: audit.StageResponseComplete, Verb: verb,
		RequestURI:               "/api/v1/namespaces/" + ns + "/" + resource,
		User:                     &audit.UserInfo{Username: user},
		SourceIPs:                []string{ip},
		UserAgent:                "kubectl/v1.35.4",
		ObjectRef:                &audit.ObjectReference{Resource: resource, Subresource: sub, Namespace: ns},
		ResponseStatus:           &audit.Status{Code: 200},
		RequestReceivedTimestamp: ts(t), StageTimestamp: ts(t),
	}
	if jti != "" {
		e.User.Extra = map[string][]string{ExtraCredentialID: {"JTI=" + jti}}
	}
	return e
}

const saBuilder = "system:serviceaccount:team-a:builder"

func mustMint(t *testing.T, s *State, now time.Time, src Source, e *audit.Event) Effects {
	t.Helper()
	m, ok := s.MintOf(src, e)
	if !ok {
		t.Fatalf("MintOf(%s) = false", e.AuditID)
	}
	return s.Mint(now, m)
}

func attrStr(r alert.Record, k string) string {
	v, _ := r.Attr(k)
	switch v.Kind {
	case alert.KindInt:
		return fmt.Sprint(v.Int)
	case alert.KindBool:
		return fmt.Sprint(v.Bool)
	case alert.KindStrings:
		return fmt.Sprint(v.Strings)
	}
	return v.Str
}

func eventNames(recs []alert.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.EventName)
	}
	sort.Strings(out)
	return out
}
