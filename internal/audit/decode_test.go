package audit

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// canonical is a RequestResponse-level token create as kube-apiserver writes it.
const canonical = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/app/token?dryRun=All\u0026x=1","verb":"create","user":{"username":"alice","uid":"u1","groups":["dev","system:authenticated"],"extra":{"authentication.kubernetes.io/credential-id":["X509SHA256=ab"]}},"impersonatedUser":{"username":"bob","groups":["system:authenticated"]},"sourceIPs":["10.0.0.9","192.0.2.7"],"userAgent":"kubectl/v1.35.4","objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","apiVersion":"v1","subresource":"token"},"responseStatus":{"metadata":{},"code":201},"requestObject":{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{},"spec":{"audiences":["vault"],"expirationSeconds":3600,"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"app-0","uid":"p1"}},"status":{"token":"","expirationTimestamp":null}},"responseObject":{"kind":"TokenRequest","status":{"token":"eyJSECRET.TOKEN.VALUE","expirationTimestamp":"2026-11-27T00:00:00Z"}},"requestReceivedTimestamp":"2026-11-26T23:09:13.821930Z","stageTimestamp":"2026-11-26T23:09:13.826405Z","annotations":{"authentication.kubernetes.io/issued-credential-id":"JTI=j1","authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}`

func wantCanonical() *Event {
	exp := int64(3600)
	return &Event{
		Level:            "RequestResponse",
		AuditID:          "a1",
		Stage:            StageResponseComplete,
		RequestURI:       "/api/v1/namespaces/team-a/serviceaccounts/app/token?dryRun=All&x=1",
		Verb:             "create",
		User:             &UserInfo{Username: "alice", UID: "u1", Groups: []string{"dev", "system:authenticated"}, Extra: map[string][]string{"authentication.kubernetes.io/credential-id": {"X509SHA256=ab"}}},
		ImpersonatedUser: &UserInfo{Username: "bob", Groups: []string{"system:authenticated"}},
		SourceIPs:        []string{"10.0.0.9", "192.0.2.7"},
		UserAgent:        "kubectl/v1.35.4",
		ObjectRef:        &ObjectReference{Resource: "serviceaccounts", Namespace: "team-a", Name: "app", APIVersion: "v1", Subresource: "token"},
		ResponseStatus:   &Status{Code: 201},
		RequestObject: &TokenRequest{Spec: TokenRequestSpec{
			Audiences: []string{"vault"}, ExpirationSeconds: &exp,
			BoundObjectRef: &BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "app-0", UID: "p1"},
		}},
		RequestReceivedTimestamp: "2026-11-26T23:09:13.821930Z",
		StageTimestamp:           "2026-11-26T23:09:13.826405Z",
		Annotations: map[string]string{
			"authentication.kubernetes.io/issued-credential-id": "JTI=j1",
			"authorization.k8s.io/decision":                     "allow",
			"authorization.k8s.io/reason":                       "",
		},
	}
}

func TestDecodeCanonical(t *testing.T) {
	got, err := Decode([]byte(canonical + "\n"))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if diff := cmp.Diff(wantCanonical(), got); diff != "" {
		t.Errorf("Decode mismatch (-want +got):\n%s", diff)
	}
	if !got.IsTokenCreate() || got.SourceIP() != "192.0.2.7" || !got.DryRun() || got.Username() != "alice" {
		t.Errorf("helpers: IsTokenCreate %v SourceIP %q DryRun %v Username %q", got.IsTokenCreate(), got.SourceIP(), got.DryRun(), got.Username())
	}
}

// TestDecodeFormattingVariants: the JSON meaning decides, not its spelling.
func TestDecodeFormattingVariants(t *testing.T) {
	tests := []struct {
		name string
		give string
	}{
		{"spaces and newlines", strings.NewReplacer(`":`, `" :  `, `,"`, " ,\n\t\"", `{`, "{ ", `}`, " }").Replace(canonical)},
		{"escaped keys", strings.NewReplacer(`"verb"`, `"\u0076erb"`, `"subresource"`, `"sub\u0072esource"`, `"username"`, `"user\u006eame"`).Replace(canonical)},
		{"escaped values", strings.NewReplacer(`"create"`, `"\u0063reate"`, `"token"}`, `"t\u006fken"}`, `"alice"`, `"\u0061lice"`, `"serviceaccounts"`, `"service\u0061ccounts"`).Replace(canonical)},
		{"escaped slash", strings.NewReplacer(`/api/v1/`, `\/api\/v1\/`).Replace(canonical)},
		{"key order", reorder(canonical)},
		{"leading whitespace", "  \t" + canonical + " \r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.give == canonical {
				t.Fatal("variant equals canonical: the test would prove nothing")
			}
			got, err := Decode([]byte(tt.give))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(wantCanonical(), got); diff != "" {
				t.Errorf("Decode mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// reorder moves "verb" and "user" to the end and objectRef's fields around.
func reorder(s string) string {
	s = strings.Replace(s, `"verb":"create",`, ``, 1)
	s = strings.Replace(s, `{"resource":"serviceaccounts","namespace":"team-a","name":"app","apiVersion":"v1","subresource":"token"}`,
		`{"subresource":"token","name":"app","apiVersion":"v1","namespace":"team-a","resource":"serviceaccounts"}`, 1)
	return strings.TrimSuffix(s, "}") + `,"verb":"create"}`
}

func TestDecodeExactKeys(t *testing.T) {
	tests := []struct {
		name, give string
		check      func(*Event) bool
	}{
		{"case differs is another key", `{"Verb":"create","verb":"get"}`, func(e *Event) bool { return e.Verb == "get" }},
		{"case differs only", `{"Verb":"create"}`, func(e *Event) bool { return e.Verb == "" }},
		{"nested case differs", `{"objectRef":{"Subresource":"token","resource":"serviceaccounts"}}`, func(e *Event) bool { return e.ObjectRef.Subresource == "" }},
		{"kelvin sign is not k", "{\"\u212aind\":\"x\",\"user\":{\"userna\u212ae\":\"x\"}}", func(e *Event) bool { return e.User.Username == "" }},
		{"last duplicate wins", `{"verb":"get","verb":"create"}`, func(e *Event) bool { return e.Verb == "create" }},
		{"duplicate object replaced whole", `{"user":{"username":"a","groups":["x"]},"user":{"username":"b"}}`, func(e *Event) bool { return e.Username() == "b" && e.User.Groups == nil }},
		{"duplicate map replaced whole", `{"annotations":{"a":"1"},"annotations":{"b":"2"}}`, func(e *Event) bool { return len(e.Annotations) == 1 && e.Annotations["b"] == "2" }},
		{"escaped duplicate", `{"verb":"get","\u0076erb":"create"}`, func(e *Event) bool { return e.Verb == "create" }},
		{"wrong type overwritten", `{"verb":5,"verb":"create"}`, func(e *Event) bool { return e.Verb == "create" }},
		{"same names in other objects", `{"verb":"create","objectRef":{"name":"a","resource":"serviceaccounts","subresource":"token"},"requestObject":{"metadata":{"name":"x"},"spec":{"boundObjectRef":{"name":"p","kind":"Pod"}}},"responseObject":{"spec":{"boundObjectRef":{"name":"q"}}}}`, func(e *Event) bool {
			return e.ObjectRef.Name == "a" && e.RequestObject.Spec.BoundObjectRef.Name == "p"
		}},
		{"null user", `{"user":null}`, func(e *Event) bool { return e.User == nil }},
		{"empty user", `{"user":{}}`, func(e *Event) bool { return e.User != nil && e.Username() == "" }},
		{"requestObject only for token creates", `{"verb":"create","objectRef":{"resource":"pods"},"requestObject":{"spec":{"audiences":5}}}`, func(e *Event) bool { return e.RequestObject == nil }},
		{"requestObject null", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"},"requestObject":null}`, func(e *Event) bool { return e.RequestObject == nil }},
		{"responseObject of any shape", `{"verb":"create","responseObject":[1,{"a":null}]}`, func(e *Event) bool { return e.Verb == "create" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.give))
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.give, err)
			}
			if !tt.check(got) {
				t.Errorf("Decode(%s) = %+v", tt.give, got)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, give, want string
	}{
		{"empty", "", "empty line"},
		{"blank", " \n", "empty line"},
		{"torn", canonical[:len(canonical)/2], "decode audit event"},
		{"torn in the token", canonical[:strings.Index(canonical, "SECRET")+3], "unexpected end of JSON input"},
		{"garbage", "\x00\xff garbage", "not a JSON object"},
		{"array", `[{"verb":"create"}]`, "not a JSON object"},
		{"unicode space", "\u00a0{}", "not a JSON object"},
		{"torn inside a token", `eyJhbGciOiJSUzI1NiJ9.payload"}}}`, "not a JSON object"},
		{"null", `null`, "not a JSON object"},
		{"two objects", `{"verb":"create"}{"verb":"get"}`, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.give))
			if err == nil {
				t.Fatalf("Decode(%q) = %+v, want error", tt.give, got)
			}
			if strings.Contains(err.Error(), "eyJ") || strings.Contains(err.Error(), "payload") {
				t.Errorf("Decode(%q) error %q quotes the line", tt.give, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "decode audit event") {
				t.Errorf("Decode(%q) error = %q, want it to start with %q and contain %q", tt.give, err, "decode audit event", tt.want)
			}
		})
	}
}

// TestDecodeWrongTypes: a field of the wrong JSON type is left absent and
// named in Malformed; the rest of the event decodes, so a token create still
// alerts with its actor.
func TestDecodeWrongTypes(t *testing.T) {
	tc := `"verb":"create","objectRef":{"resource":"serviceaccounts","namespace":"ns","name":"sa","subresource":"token"},"user":{"username":"alice"}`
	tests := []struct {
		name          string
		give          string
		wantMalformed []string
		check         func(e *Event) bool
	}{
		{"code as a string", `{` + tc + `,"responseStatus":{"code":"201"}}`, []string{"responseStatus.code"},
			func(e *Event) bool { return e.ResponseStatus != nil && e.ResponseStatus.Code == 0 }},
		{"code overflow", `{` + tc + `,"responseStatus":{"code":99999999999}}`, []string{"responseStatus.code"},
			func(e *Event) bool { return e.ResponseStatus.Code == 0 }},
		{"code not an integer", `{` + tc + `,"responseStatus":{"code":201.5,"status":"x"}}`, []string{"responseStatus.code"},
			func(e *Event) bool { return e.ResponseStatus.Status == "x" }},
		{"number for a string", `{` + tc + `,"userAgent":7,"auditID":"a"}`, []string{"userAgent"},
			func(e *Event) bool { return e.UserAgent == "" && e.AuditID == "a" }},
		{"object for an array", `{` + tc + `,"sourceIPs":{"a":"1.2.3.4"}}`, []string{"sourceIPs"},
			func(e *Event) bool { return e.SourceIPs == nil }},
		{"bad element", `{` + tc + `,"sourceIPs":["1.2.3.4",5]}`, []string{"sourceIPs"},
			func(e *Event) bool { return e.SourceIPs == nil }},
		{"bad group", `{"user":{"username":"alice","groups":"dev"},"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"}}`, []string{"user.groups"},
			func(e *Event) bool { return e.Username() == "alice" && e.User.Groups == nil && e.IsTokenCreate() }},
		{"bad annotation", `{` + tc + `,"annotations":{"a":"x","b":1}}`, []string{"annotations"},
			func(e *Event) bool { return e.Annotations == nil }},
		{"bad extra", `{` + tc + `,"impersonatedUser":{"username":"bob","extra":{"k":"v"}}}`, []string{"impersonatedUser.extra"},
			func(e *Event) bool { return e.ImpersonatedUser.Username == "bob" && e.ImpersonatedUser.Extra == nil }},
		{"user not an object", `{"user":"alice","verb":"create"}`, []string{"user"},
			func(e *Event) bool { return e.User == nil && e.Verb == "create" }},
		{"objectRef an array", `{"objectRef":["serviceaccounts"],"verb":"create"}`, []string{"objectRef"},
			func(e *Event) bool { return e.ObjectRef == nil && !e.IsTokenCreate() }},
		{"verb a number", `{"verb":5,"objectRef":{"resource":"serviceaccounts","subresource":"token"}}`, []string{"verb"},
			func(e *Event) bool { return !e.IsTokenCreate() }},
		{"username a number", `{"verb":"create","user":{"username":5,"uid":"u"}}`, []string{"user.username"},
			func(e *Event) bool { return e.User != nil && e.Username() == "" && e.User.UID == "u" }},
		{"bad spec field", `{` + tc + `,"requestObject":{"spec":{"audiences":["a"],"expirationSeconds":"x"}}}`, []string{"requestObject.spec.expirationSeconds"},
			func(e *Event) bool {
				return e.RequestObject != nil && e.RequestObject.Spec.ExpirationSeconds == nil && len(e.RequestObject.Spec.Audiences) == 1
			}},
		{"spec a string", `{` + tc + `,"requestObject":{"spec":"x"}}`, []string{"requestObject.spec"},
			func(e *Event) bool { return e.RequestObject != nil && e.RequestObject.Spec.Audiences == nil }},
		{"requestObject ignored unless a token create", `{"verb":"get","requestObject":5}`, nil,
			func(e *Event) bool { return e.RequestObject == nil }},
		{"several", `{` + tc + `,"stage":1,"responseStatus":{"code":"201","reason":[]}}`, []string{"stage", "responseStatus.reason", "responseStatus.code"},
			func(e *Event) bool { return e.Username() == "alice" }},
		{"null is absent, not malformed", `{` + tc + `,"responseStatus":{"code":null},"sourceIPs":null,"user":null}`, nil,
			func(e *Event) bool { return e.User == nil && e.ResponseStatus != nil }},
		{"last duplicate decides", `{` + tc + `,"userAgent":5,"userAgent":"ua"}`, nil,
			func(e *Event) bool { return e.UserAgent == "ua" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.give))
			if err != nil {
				t.Fatalf("Decode(%s): %v, want an event", tt.give, err)
			}
			if diff := cmp.Diff(tt.wantMalformed, got.Malformed); diff != "" {
				t.Errorf("Decode(%s).Malformed (-want +got):\n%s", tt.give, diff)
			}
			if !tt.check(got) {
				t.Errorf("Decode(%s) = %+v", tt.give, got)
			}
		})
	}
}

func TestDryRun(t *testing.T) {
	tests := []struct {
		uri  string
		want bool
	}{
		{"/api/v1/namespaces/a/serviceaccounts/b/token?dryRun=All", true},
		{"/api/v1/namespaces/a/serviceaccounts/b/token?timeout=5s&dryRun=All", true},
		{"/api/v1/namespaces/a/serviceaccounts/b/token?dryRun=all", false},
		{"/api/v1/namespaces/a/serviceaccounts/b/token?dryRun=", false},
		{"/api/v1/namespaces/a/serviceaccounts/b/token?dryRun=%41ll", true},
		{"/api/v1/namespaces/a/serviceaccounts/b/token", false},
		{"/api/v1/namespaces/dryRun=All/serviceaccounts/b/token", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := (&Event{RequestURI: tt.uri}).DryRun(); got != tt.want {
			t.Errorf("DryRun(%q) = %v, want %v", tt.uri, got, tt.want)
		}
	}
}

// FuzzDecode: Decode never panics, agrees with the exact decoder (the fast
// path must not change any result), and what it accepts it accepts again
// with the same meaning when re-spaced.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(canonical))
	f.Add([]byte(`{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"},"user":{"username":"a"}}`))
	f.Add([]byte(`{"a":`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := Decode(line)
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned %+v with error %v", e, err)
			}
			if trimmed := bytes.Trim(line, jsonSpace); len(trimmed) > 0 && trimmed[0] == '{' {
				if x, xerr := decodeExact(trimmed); xerr == nil {
					t.Fatalf("Decode rejected (%v) what the exact decoder accepts (%+v): %q", err, x, line)
				}
			}
			return
		}
		exact, xerr := decodeExact(bytes.Trim(line, jsonSpace))
		if xerr != nil {
			t.Fatalf("Decode accepted what the exact decoder rejects (%v): %q", xerr, line)
		}
		if diff := cmp.Diff(exact, e); diff != "" {
			t.Fatalf("Decode differs from the exact decoder on %q (-exact +Decode):\n%s", line, diff)
		}
		again, err := Decode(append([]byte(" \n"), append(line, '\n')...))
		if err != nil {
			t.Fatalf("re-spaced: %v", err)
		}
		if diff := cmp.Diff(e, again); diff != "" {
			t.Errorf("re-spaced decode differs:\n%s", diff)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	line := []byte(canonical)
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if _, err := Decode(line); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFastPath: lines as kube-apiserver writes them take the one-pass
// path; on lines where JSON v2's defaults and the exact decoder could part
// (case variants, duplicates, escaped names, invalid UTF-8, lone surrogates,
// wrong types, deep nesting) the fast path either declines or gives the
// exact decoder's result.
func TestFastPath(t *testing.T) {
	tests := []struct {
		give string
		fast bool // the fast path must take it
	}{
		{canonical, true},
		{`{"a":{"verb":1},"b":{"verb":2}}`, true},
		{`{"s":"\"Verb\":1"}`, true},
		{`{"labels":{"Team":"a"}}`, true},
		{`{"Verb":"create"}`, false},
		{`{"objectRef":{"Name":"x"}}`, false},
		{`{"verb":"a","verb":"b"}`, false},
		{`{"\u0076erb":"create"}`, false},
		{`{"verb":"create","\u0076erb":"get"}`, false},
		{"{\"v\u00e9rb\":1}", false},
		{"{\"verb\":\"\xff\"}", false},
		{`{"verb":"\ud800x"}`, false},
		{`{"annotations":{"a":"1","a":"2"}}`, false},
		{`{"responseStatus":{"code":1e0}}`, false},
		{`{"responseStatus":{"code":-0}}`, false},
		{strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70), false},
	}
	for _, tt := range tests {
		exact, err := decodeExact([]byte(tt.give))
		if err != nil {
			t.Fatalf("exact decoder on %.40q: %v", tt.give, err)
		}
		got, ok := decodeFast([]byte(tt.give))
		if tt.fast && !ok {
			t.Errorf("decodeFast(%.40q) declined a plain line", tt.give)
		}
		if ok {
			if diff := cmp.Diff(exact, got); diff != "" {
				t.Errorf("decodeFast(%.40q) differs from the exact decoder (-exact +fast):\n%s", tt.give, diff)
			}
		}
	}
}
