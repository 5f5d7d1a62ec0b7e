package linematch

import (
	"strings"
	"testing"
)

// genuineGet is a genuine kube-apiserver v1.35.4 line (a list of secrets by
// a client certificate user).
const genuineGet = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"0d9b2c6a-4f49-45b5-bc6e-bbfa721922aa","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/secrets?limit=500","verb":"list","user":{"username":"kubernetes-admin","groups":["system:masters","system:authenticated"],"extra":{"authentication.kubernetes.io/credential-id":["X509SHA256=59b31e704fec74a956a1c7980cb1b1b1b2558a0a6d72b027ca4cb4ac05237880"]}},"sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.35.4 (linux/amd64) kubernetes/0000000","objectRef":{"resource":"secrets","namespace":"team-a","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-11-26T23:09:17.000000Z","stageTimestamp":"2026-11-26T23:09:17.002000Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}`

func TestBlockSmall(t *testing.T) {
	withJTI := strings.Replace(genuineGet, "X509SHA256=59b31e704fec74a956a1c7980cb1b1b1b2558a0a6d72b027ca4cb4ac05237880", "JTI="+jtiA, 1)
	block := strings.Join([]string{genuineGet, withJTI, "not json", genuineGet}, "\n") + "\n"
	s := watchSet(t, Watch{Kind: Token, Key: jtiA}, Watch{Kind: ActorUser, Key: "kubernetes-admin"})
	var m Matcher
	hits, c := m.Block(nil, []byte(block), s)
	var got []int
	for _, h := range hits {
		got = append(got, h.Offset)
	}
	off2 := len(genuineGet) + 1
	off4 := off2 + len(withJTI) + 1 + len("not json") + 1
	want := []int{0, off2, off4}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("Block offsets = %v, want %v (counts %+v)", got, want, c)
	}
	if hits[0].Kinds != ActorUser || hits[1].Kinds != Token|ActorUser {
		t.Errorf("Block kinds = %v, %v", hits[0].Kinds, hits[1].Kinds)
	}
}

// TestBlockWindows checks Block and BlockMarked against a full decode on a
// block of many windows, so that lines with a JTI, an escape or a legacy
// token fall on every side of the windows' edges.
func TestBlockWindows(t *testing.T) {
	r := strings.Replace
	x509 := "X509SHA256=59b31e704fec74a956a1c7980cb1b1b1b2558a0a6d72b027ca4cb4ac05237880"
	withJTI := r(genuineGet, x509, "JTI="+jtiA, 1)
	variants := []string{
		genuineGet,
		withJTI,
		r(genuineGet, x509, "JTI="+strings.ToUpper(jtiB), 1),
		r(withJTI, "JTI=8", `JTI=\u0038`, 1),
		r(genuineGet, `"annotations":{`, `"annotations":{"authentication.k8s.io/legacy-token":"system:serviceaccount:ns:sa",`, 1),
		r(genuineGet, `"annotations":{`, `"annotations":{"authentication.k8s.io/leg\u0061cy-token":"system:serviceaccount:ns:sa",`, 1),
		r(genuineGet, `"annotations":{`, `"annotations":{"authentication.k8s.io/legacy-toke\u006e":"system:serviceaccount:ns:sa",`, 1),
		r(genuineGet, `"annotations":{`, `"annotations":{"authentication.k8s.io/legacy-token-x":"system:serviceaccount:ns:sa",`, 1),
		r(genuineGet, `?limit=500`, `?limit=500\u0026x=1`, 1),
	}
	var b strings.Builder
	for i := 0; b.Len() < 5*window; i++ {
		b.WriteString(variants[i*7%len(variants)])
		b.WriteString(strings.Repeat(" ", i%13)) // moves the lines against the edges
		b.WriteByte('\n')
	}
	block := []byte(b.String())
	for _, s := range []*Set{
		{},
		watchSet(t, Watch{Kind: Token, Key: jtiA}, Watch{Kind: Token, Key: jtiB}),
		watchSet(t, Watch{Kind: ActorCredential, Key: jtiB}, Watch{Kind: ActorUser, Key: "kubernetes-admin"}),
	} {
		checkBlock(t, block, s)
	}
}
