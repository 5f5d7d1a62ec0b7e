package audit

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// tokenCreate returns a small token create with its actor and target.
func tokenCreate() *Event {
	return &Event{
		AuditID: "a1", Stage: StageResponseComplete, Verb: "create",
		RequestURI:     "/api/v1/namespaces/team-a/serviceaccounts/app/token",
		User:           &UserInfo{Username: "mallory", Groups: []string{"dev"}},
		SourceIPs:      []string{"10.0.0.9"},
		ObjectRef:      &ObjectReference{Resource: "serviceaccounts", Namespace: "team-a", Name: "app", Subresource: "token"},
		RequestObject:  &TokenRequest{Spec: TokenRequestSpec{Audiences: []string{"vault"}}},
		ResponseStatus: &Status{Code: 201},
		Annotations:    map[string]string{"authorization.k8s.io/decision": "allow"},
	}
}

func TestCut(t *testing.T) {
	tests := []struct {
		name string
		give string
		max  int
	}{
		{"fits", "abc", 100},
		{"ascii", strings.Repeat("a", 1000), 100},
		{"multi-byte at the cut", strings.Repeat("é", 500), 101},
		{"four-byte runes", strings.Repeat("😀", 300), 99},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Cut(tt.give, tt.max)
			if len(tt.give) <= tt.max {
				if got != tt.give {
					t.Errorf("Cut(%q) = %q, want it unchanged", tt.give, got)
				}
				return
			}
			if len(got) > tt.max || !utf8.ValidString(got) || !strings.HasPrefix(tt.give, got[:strings.Index(got, "...[truncated")]) {
				t.Errorf("Cut(%d bytes, %d) = %q", len(tt.give), tt.max, got)
			}
			if !strings.Contains(got, fmt.Sprintf("truncated %d bytes sha256:", len(tt.give))) {
				t.Errorf("Cut = %q, want it to say so", got)
			}
			if Cut(tt.give+"x", tt.max) == got {
				t.Errorf("Cut gives the same for different values")
			}
		})
	}
}

func TestBound(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	tests := []struct {
		name   string
		modify func(e *Event)
		want   []string // Truncated
		check  func(e *Event) bool
	}{
		{"small is untouched", func(e *Event) {}, nil, func(e *Event) bool { return cmp.Equal(e, tokenCreate()) }},
		{"padded audience", func(e *Event) { e.RequestObject.Spec.Audiences = []string{big} },
			[]string{"requestObject.spec.audiences"},
			func(e *Event) bool { return len(e.RequestObject.Spec.Audiences[0]) <= MaxEntry }},
		{"many audiences", func(e *Event) {
			for i := range 100000 {
				e.RequestObject.Spec.Audiences = append(e.RequestObject.Spec.Audiences, fmt.Sprint("aud-", i))
			}
		}, []string{"requestObject.spec.audiences"},
			func(e *Event) bool {
				a := e.RequestObject.Spec.Audiences
				return len(a) == MaxEntries && a[0] == "vault"
			}},
		{"annotation", func(e *Event) { e.Annotations["z"] = big }, []string{"annotations"},
			func(e *Event) bool {
				return e.Annotations["authorization.k8s.io/decision"] == "allow" && len(e.Annotations["z"]) <= MaxEntry
			}},
		{"source IPs keep the last", func(e *Event) {
			ips := strings.Split(strings.Repeat("1.1.1.1,", 100000), ",")
			e.SourceIPs = append(ips[:100000], e.SourceIPs...)
		}, []string{"sourceIPs"},
			func(e *Event) bool { return e.SourceIP() == "10.0.0.9" && len(e.SourceIPs) == MaxEntries }},
		{"strings", func(e *Event) {
			e.UserAgent, e.RequestURI, e.AuditID = big, big, big
			e.ResponseStatus.Message = big
		}, []string{"auditID", "requestURI", "responseStatus.message", "userAgent"},
			func(e *Event) bool { return len(e.UserAgent) <= MaxString && e.Username() == "mallory" }},
		{"user extra and groups", func(e *Event) {
			e.User.Extra = map[string][]string{"a": {big}, "b": strings.Split(strings.Repeat("v,", 5000), ",")}
			e.User.Groups = append(e.User.Groups, big)
			e.ImpersonatedUser = &UserInfo{Username: "bob", Extra: map[string][]string{big: {"v"}}}
		}, []string{"impersonatedUser.extra", "user.extra", "user.groups"},
			func(e *Event) bool { return len(e.User.Extra["b"]) == MaxEntries && e.User.Groups[0] == "dev" }},
		{"huge username is cut, not dropped", func(e *Event) { e.User.Username = "mallory" + big }, []string{"user.username"},
			func(e *Event) bool {
				return strings.HasPrefix(e.Username(), "mallory") && len(e.Username()) <= MaxIdentity
			}},
		{"marks merge", func(e *Event) { e.Truncated = []string{"zzz"}; e.UserAgent = big }, []string{"userAgent", "zzz"},
			func(e *Event) bool { return true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tokenCreate()
			tt.modify(e)
			Bound(e)
			if diff := cmp.Diff(tt.want, e.Truncated); diff != "" {
				t.Errorf("Truncated (-want +got):\n%s", diff)
			}
			if !tt.check(e) {
				t.Errorf("Bound gave %.300v", e)
			}
			if e.Username() == "" || !e.IsTokenCreate() || e.ObjectRef.Namespace != "team-a" || e.ObjectRef.Name != "app" {
				t.Errorf("actor or target lost: %+v %+v", e.User, e.ObjectRef)
			}
			again := *e
			again.Truncated = append([]string(nil), e.Truncated...)
			Bound(&again)
			if diff := cmp.Diff(e, &again); diff != "" {
				t.Errorf("Bound(Bound(e)) changed more (-once +twice):\n%s", diff)
			}
		})
	}
}
