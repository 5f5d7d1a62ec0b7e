package wire

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

const full = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/app/token?dryRun=All","verb":"create","user":{"username":"alice","uid":"u1","groups":["dev"],"extra":{"authentication.kubernetes.io/credential-id":["X509SHA256=ab"]}},"impersonatedUser":{"username":"bob","groups":["system:authenticated"]},"sourceIPs":["10.0.0.9","192.0.2.7"],"userAgent":"kubectl","objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","uid":"o1","apiGroup":"","apiVersion":"v1","subresource":"token"},"responseStatus":{"metadata":{},"status":"Failure","message":"m","reason":"Forbidden","code":403},"requestObject":{"spec":{"audiences":["vault"],"expirationSeconds":0,"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"app-0","uid":"p1"}}},"responseObject":{"status":{"token":"eyJhbGciOiJSUzI1NiJ9.SECRETPAYLOAD.SIG"}},"requestReceivedTimestamp":"2026-11-26T23:09:13.821930Z","stageTimestamp":"2026-11-26T23:09:13.826405Z","annotations":{"authorization.k8s.io/decision":"allow"}}`

func roundTrip(t *testing.T, e *audit.Event) {
	t.Helper()
	b, err := proto.Marshal(ToProto(e))
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var p tokenwatchv1.TokenEvent
	if err := proto.Unmarshal(b, &p); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if diff := cmp.Diff(e, FromProto(&p), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestRoundTrip(t *testing.T) {
	e, err := audit.Decode([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	tests := []struct {
		name string
		give *audit.Event
	}{
		{"full", e},
		{"empty", &audit.Event{}},
		{"empty user is not absent", &audit.Event{User: &audit.UserInfo{}}},
		{"request body without spec fields", &audit.Event{RequestObject: &audit.TokenRequest{}}},
		{"zero expiration is kept", &audit.Event{RequestObject: &audit.TokenRequest{Spec: audit.TokenRequestSpec{ExpirationSeconds: &zero}}}},
		{"status without code", &audit.Event{ResponseStatus: &audit.Status{}}},
		{"objectRef empty", &audit.Event{ObjectRef: &audit.ObjectReference{}}},
		{"truncated and malformed fields", &audit.Event{
			Truncated: []string{"requestObject.spec.audiences", "annotations"},
			Malformed: []string{"responseStatus.code"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { roundTrip(t, tt.give) })
	}
}

func TestNoToken(t *testing.T) {
	e, err := audit.Decode([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(ToProto(e))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, "SECRETPAYLOAD") || strings.Contains(s, "eyJhbGci") {
		t.Errorf("the minted token is on the wire")
	}
}

func TestFromProtoUserWithoutPresent(t *testing.T) {
	got := FromProto(&tokenwatchv1.TokenEvent{User: &tokenwatchv1.UserInfo{Username: "alice"}})
	if got.Username() != "alice" {
		t.Errorf("Username() = %q, want alice: a name without Present still counts", got.Username())
	}
	if got := FromProto(&tokenwatchv1.TokenEvent{User: &tokenwatchv1.UserInfo{}}); got.User != nil {
		t.Errorf("User = %+v, want nil for an empty, not-present user", got.User)
	}
}

// FuzzRoundTrip: whatever Decode accepts crosses the wire unchanged.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte(`{"user":{"username":"\u00ff\ud800"},"annotations":{"\u0000":""}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := audit.Decode(line)
		if err != nil {
			return
		}
		roundTrip(t, e)
	})
}

// hugeEvent has every field beyond its bound: n bytes per string, count
// entries per list and map, and as many values per user.extra key.
func hugeEvent(n, count int) *audit.Event {
	s := func(c byte) string { return strings.Repeat(string(c), n) }
	list := make([]string, count)
	for i := range list {
		list[i] = s('l')[:max(0, n-8)] + strings.Repeat("0", 8)[len(fmt.Sprint(i)):] + fmt.Sprint(i)
	}
	m := map[string]string{}
	x := map[string][]string{}
	for _, k := range list {
		m[k] = k
		x[k] = list
	}
	user := func() *audit.UserInfo { return &audit.UserInfo{Username: s('u'), UID: s('i'), Groups: list, Extra: x} }
	exp := int64(1)
	return &audit.Event{
		Level: s('L'), AuditID: s('A'), Stage: s('S'), RequestURI: s('R'), Verb: s('V'),
		User: user(), ImpersonatedUser: user(), SourceIPs: list, UserAgent: s('U'),
		ObjectRef: &audit.ObjectReference{Resource: s('r'), Namespace: s('n'), Name: s('m'), UID: s('d'),
			APIGroup: s('g'), APIVersion: s('v'), Subresource: s('b')},
		ResponseStatus: &audit.Status{Status: s('s'), Message: s('M'), Reason: s('N'), Code: 201},
		RequestObject: &audit.TokenRequest{Spec: audit.TokenRequestSpec{Audiences: list, ExpirationSeconds: &exp,
			BoundObjectRef: &audit.BoundObjectReference{Kind: s('k'), APIVersion: s('a'), Name: s('e'), UID: s('D')}}},
		RequestReceivedTimestamp: s('T'), StageTimestamp: s('t'), Annotations: m,
		Malformed: []string{"responseStatus.code"},
	}
}

// boundedSize is the encoded size of e once bounded, with a 4 KiB file name.
func boundedSize(e *audit.Event) int {
	audit.Bound(e)
	p := ToProto(e)
	p.Source = &tokenwatchv1.SourcePosition{File: strings.Repeat("f", 4096), Offset: 1 << 62}
	return proto.Size(p)
}

// TestBoundedSize: however large every field, a bounded event fits
// MaxBoundedBytes.
func TestBoundedSize(t *testing.T) {
	tests := []struct {
		name     string
		n, count int
	}{
		{"every field just over", audit.MaxIdentity + 1, audit.MaxEntries + 1},
		{"entries just over", audit.MaxEntry + 1, audit.MaxEntries * 4},
		{"many small entries", 1, 5000},
		{"large strings", 1 << 20, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := boundedSize(hugeEvent(tt.n, tt.count)); n > MaxBoundedBytes {
				t.Errorf("bounded event of %d bytes, want at most %d", n, MaxBoundedBytes)
			}
		})
	}
}

// FuzzBoundedSize: any shape of event, once bounded, fits MaxBoundedBytes
// and keeps its actor and target when they are within their bounds.
func FuzzBoundedSize(f *testing.F) {
	f.Add(uint32(10), uint16(3))
	f.Add(uint32(audit.MaxEntry+1), uint16(audit.MaxEntries+1))
	f.Fuzz(func(t *testing.T, n uint32, count uint16) {
		e := hugeEvent(int(n%(1<<20)), int(count%300))
		e.User.Username, e.ObjectRef.Namespace, e.ObjectRef.Name = "alice", "ns", "sa"
		if got := boundedSize(e); got > MaxBoundedBytes {
			t.Fatalf("bounded event of %d bytes (n=%d count=%d), want at most %d", got, n, count, MaxBoundedBytes)
		}
		if e.User.Username != "alice" || e.ObjectRef.Namespace != "ns" || e.ObjectRef.Name != "sa" {
			t.Errorf("actor or target changed: %q %q %q", e.User.Username, e.ObjectRef.Namespace, e.ObjectRef.Name)
		}
	})
}

// BenchmarkHops measures each hop of a token create across the wire, so
// that the cost of converting the aggregator's decoded TokenEvent back into
// audit.Event (FromProto) reads next to the protobuf decoding it follows.
func BenchmarkHops(b *testing.B) {
	e, err := audit.Decode([]byte(full))
	if err != nil {
		b.Fatal(err)
	}
	enc, err := proto.Marshal(ToProto(e))
	if err != nil {
		b.Fatal(err)
	}
	var decoded tokenwatchv1.TokenEvent
	if err := proto.Unmarshal(enc, &decoded); err != nil {
		b.Fatal(err)
	}
	b.Run("ToProto", func(b *testing.B) {
		for b.Loop() {
			ToProto(e)
		}
	})
	b.Run("Marshal", func(b *testing.B) {
		p := ToProto(e)
		for b.Loop() {
			if _, err := proto.Marshal(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unmarshal", func(b *testing.B) {
		for b.Loop() {
			var p tokenwatchv1.TokenEvent
			if err := proto.Unmarshal(enc, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("FromProto", func(b *testing.B) {
		for b.Loop() {
			FromProto(&decoded)
		}
	})
}
