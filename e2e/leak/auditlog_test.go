package leak

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// maxLine is the agent's longest line (internal/follow DefaultMaxLine);
// maxEvent the largest token-create event it sends (sender.MaxEventBytes).
const (
	maxLine  = 16 << 20
	maxEvent = 3 << 20
)

// control goes into a field the agent does forward (the user agent): it
// must be found on the plaintext wire and in the alerts, which proves that
// what is searched is what was sent.
const control = "leak-canary/7f3a9c1e-CONTROL-d41d8cd98f00"

// mintedToken returns a service-account token shaped like the apiserver's:
// an RS256 JWT with a random key id, claims and a 256-byte signature.
func mintedToken(t testing.TB, ns, sa string) string {
	t.Helper()
	rnd := func(n int) []byte {
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	enc := base64.RawURLEncoding
	header := fmt.Sprintf(`{"alg":"RS256","kid":"%s"}`, enc.EncodeToString(rnd(32)))
	claims := fmt.Sprintf(`{"aud":["https://kubernetes.default.svc"],"exp":%d,"iat":%d,"iss":"https://kubernetes.default.svc","jti":"%s","kubernetes.io":{"namespace":"%s","serviceaccount":{"name":"%s","uid":"%s"}},"nbf":%d,"sub":"system:serviceaccount:%s:%s"}`,
		1795000000, 1794996400, hex.EncodeToString(rnd(16)), ns, sa, hex.EncodeToString(rnd(16)), 1794996400, ns, sa)
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims)) + "." + enc.EncodeToString(rnd(256))
}

// auditEvent is an audit.k8s.io/v1 Event in the apiserver's field order.
type auditEvent struct {
	Kind                     string            `json:"kind"`
	APIVersion               string            `json:"apiVersion"`
	Level                    string            `json:"level"`
	AuditID                  string            `json:"auditID"`
	Stage                    string            `json:"stage"`
	RequestURI               string            `json:"requestURI"`
	Verb                     string            `json:"verb"`
	User                     any               `json:"user"`
	SourceIPs                []string          `json:"sourceIPs"`
	UserAgent                string            `json:"userAgent"`
	ObjectRef                map[string]string `json:"objectRef"`
	ResponseStatus           map[string]any    `json:"responseStatus"`
	RequestObject            any               `json:"requestObject"`
	ResponseObject           any               `json:"responseObject"`
	RequestReceivedTimestamp string            `json:"requestReceivedTimestamp"`
	StageTimestamp           string            `json:"stageTimestamp"`
	Annotations              map[string]string `json:"annotations"`
}

// tokenResponse is responseObject of a RequestResponse-level TokenRequest.
type tokenResponse struct {
	Kind       string            `json:"kind"`
	APIVersion string            `json:"apiVersion"`
	Metadata   map[string]string `json:"metadata"`
	Status     struct {
		Token               string `json:"token"`
		ExpirationTimestamp string `json:"expirationTimestamp"`
	} `json:"status"`
	Pad  string         `json:"pad,omitempty"`  // makes a line too long
	Tail *tokenResponse `json:"tail,omitempty"` // a second token after the pad
}

// Log builds the audit log of the test: a genaudit log at RequestResponse
// level with its minted tokens, plus token creates whose secrets sit where a
// careless agent would let them slip: at the very start of the file (the
// part an identity fingerprint covers), escaped, in requestObject.status, in
// malformed lines, in an event too large to send whole, in a line longer than
// the agent keeps, and in a torn last line.
type Log struct {
	Data    []byte
	Secrets map[string]string // name -> token
	Wants   []harness.Want    // token_request alerts that must arrive
	// After is the next live file once Data was rotated away (its torn
	// last line with it, an incomplete_line loss): a token create and
	// another torn line.
	After       []byte
	AfterWants  []harness.Want
	AfterLosses []string
	// Losses are the tokenwatch.loss.reason values that must arrive.
	Losses []string
	// Planted is a token-shaped string in a forwarded field (the user
	// agent, after the control string): the search must find it on the
	// plaintext wire and in the alerts, which proves it reaches them.
	Planted string
}

func buildLog(t testing.TB, cluster string, genaudit []byte, genTokens []string, genWants []harness.Want) *Log {
	t.Helper()
	l := &Log{Secrets: map[string]string{}, Wants: genWants}
	for i, tok := range genTokens {
		l.Secrets[fmt.Sprintf("genaudit-%03d", i)] = tok
	}
	start := time.Date(2026, 11, 26, 9, 59, 0, 0, time.UTC)
	n := 0
	event := func(name string) (*auditEvent, string) {
		n++
		ns, sa := "team-leak", fmt.Sprintf("sa-%s", name)
		tok := mintedToken(t, ns, sa)
		l.Secrets[name] = tok
		at := start.Add(time.Duration(n) * time.Second)
		resp := &tokenResponse{Kind: "TokenRequest", APIVersion: "authentication.k8s.io/v1",
			Metadata: map[string]string{"name": sa, "namespace": ns}}
		resp.Status.Token = tok
		resp.Status.ExpirationTimestamp = at.Add(time.Hour).Format(time.RFC3339)
		e := &auditEvent{
			Kind: "Event", APIVersion: "audit.k8s.io/v1", Level: "RequestResponse",
			AuditID: fmt.Sprintf("1eac0000-0000-4000-8000-%012d", n), Stage: "ResponseComplete",
			RequestURI: fmt.Sprintf("/api/v1/namespaces/%s/serviceaccounts/%s/token", ns, sa), Verb: "create",
			User:      map[string]any{"username": "leak-tester", "groups": []string{"system:authenticated"}},
			SourceIPs: []string{"192.0.2.10"}, UserAgent: "kubectl/v1.35.4 (linux/amd64) kubernetes/0000000",
			ObjectRef: map[string]string{"resource": "serviceaccounts", "namespace": ns, "name": sa,
				"apiVersion": "v1", "subresource": "token"},
			ResponseStatus: map[string]any{"metadata": map[string]any{}, "code": 201},
			RequestObject: map[string]any{"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
				"metadata": map[string]any{}, "spec": map[string]any{"audiences": []string{"https://kubernetes.default.svc"}, "expirationSeconds": 3600},
				"status": map[string]any{"token": ""}},
			ResponseObject:           resp,
			RequestReceivedTimestamp: at.Format("2006-01-02T15:04:05.000000Z"),
			StageTimestamp:           at.Add(3 * time.Millisecond).Format("2006-01-02T15:04:05.000000Z"),
			Annotations: map[string]string{"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "",
				"authentication.kubernetes.io/issued-credential-id": "JTI=" + hex.EncodeToString([]byte(name))},
		}
		return e, tok
	}
	marshal := func(e *auditEvent) []byte {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := func(e *auditEvent) {
		ref := e.ObjectRef
		l.Wants = append(l.Wants, harness.Want{Cluster: cluster, AuditID: e.AuditID,
			RequestReceivedTimestamp: e.RequestReceivedTimestamp, User: "leak-tester",
			Namespace: ref["namespace"], Name: ref["name"], Outcome: "success"})
	}
	var buf bytes.Buffer
	line := func(b []byte) { buf.Write(b); buf.WriteByte('\n') }

	// First line: the token starts within the first 1 KiB, the bytes the
	// agent fingerprints to recognise the file (no request body, so that
	// more of the token fits).
	first, _ := event("first-line")
	first.RequestObject = nil
	want(first)
	line(marshal(first))

	buf.Write(genaudit)

	// Escaped: the key and the dots of the token as \u escapes (same JSON
	// meaning), and the control string in the forwarded user agent.
	esc, tok := event("escaped")
	l.Planted = mintedToken(t, "planted", "planted")
	esc.UserAgent = control + " " + l.Planted
	want(esc)
	b := marshal(esc)
	escaped := `"t\u006fken":"` + strings.ReplaceAll(tok, ".", `\u002e`) + `"`
	b = bytes.Replace(b, []byte(`"token":"`+tok+`"`), []byte(escaped), 1)
	if !bytes.Contains(b, []byte(escaped)) {
		t.Fatal("escaped token not in line")
	}
	line(b)

	// A token in requestObject.status too (a client may send one); only
	// the spec of a TokenRequest is forwarded.
	reqTok, _ := event("request-status")
	want(reqTok)
	other := mintedToken(t, "team-leak", "sa-request-status-2")
	l.Secrets["request-status-request-object"] = other
	reqTok.RequestObject.(map[string]any)["status"] = map[string]any{"token": other}
	line(marshal(reqTok))

	// Malformed: a syntax error in an otherwise complete token create.
	bad, _ := event("malformed-syntax")
	b = marshal(bad)
	b = bytes.Replace(b, []byte(`"verb":"create",`), []byte(`"verb":"create",,`), 1)
	line(b)

	// Malformed: user is a string, not an object.
	typed, _ := event("malformed-type")
	typed.User = "leak-tester"
	line(marshal(typed))

	// Too large to send whole: a 3.5 MB user agent. The agent cuts its
	// fields and sends it (issue 12): it alerts, with its actor.
	big, _ := event("event-too-large")
	big.UserAgent = "leak-big/" + strings.Repeat("b", maxEvent+maxEvent/6)
	want(big)
	line(marshal(big))

	// Longer than the agent keeps: tokens before and after 16 MiB of pad.
	// The agent reads the line in bounded memory and still alerts on the
	// token create in it, reporting the bytes it did not keep.
	long, _ := event("line-too-long")
	tail, _ := event("line-too-long-tail")
	long.ResponseObject.(*tokenResponse).Pad = strings.Repeat("p", maxLine)
	long.ResponseObject.(*tokenResponse).Tail = tail.ResponseObject.(*tokenResponse)
	want(long)
	line(marshal(long))
	l.Losses = append(l.Losses, "line_too_long")

	// Torn: the writer stopped mid-line (no newline), after the token.
	torn, tornTok := event("torn-last-line")
	b = marshal(torn)
	cut := bytes.Index(b, []byte(tornTok)) + len(tornTok) + 1
	buf.Write(b[:cut])

	l.Data = bytes.Clone(buf.Bytes())

	// The file after rotation.
	buf.Reset()
	after, _ := event("after-rotation")
	want(after)
	line(marshal(after))
	l.AfterWants, l.Wants = l.Wants[len(l.Wants)-1:], l.Wants[:len(l.Wants)-1]
	torn2, tornTok2 := event("torn-after-rotation")
	b = marshal(torn2)
	buf.Write(b[:bytes.Index(b, []byte(tornTok2))+len(tornTok2)])
	l.After = buf.Bytes()
	l.AfterLosses = []string{"incomplete_line"}

	all := append(bytes.Clone(l.Data), l.After...)
	for name, s := range l.Secrets {
		if !bytes.Contains(all, []byte(s)) && !bytes.Contains(all, []byte(strings.ReplaceAll(s, ".", `\u002e`))) {
			t.Fatalf("secret %s is not in the audit log", name)
		}
	}
	return l
}
