package linematch

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
)

// genuineLines returns the genuine kube-apiserver v1.35.4 lines of
// testdata/genuine.log (none of them a token create).
func genuineLines(tb testing.TB) []string {
	tb.Helper()
	b, err := os.ReadFile("testdata/genuine.log")
	if err != nil {
		tb.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// hit is a Block result as the tests compare it.
type hit struct {
	Offset int
	Kinds  Kind
}

// lines calls fn with the offset and bytes of every line of block, split as
// Block splits it.
func lines(block []byte, fn func(off int, line []byte)) {
	for off := 0; off < len(block); {
		end := bytes.IndexByte(block[off:], '\n')
		if end < 0 {
			end = len(block)
		} else {
			end += off
		}
		fn(off, block[off:end])
		off = end + 1
	}
}

// fullClassify is the reference: every line of block decoded and
// classified.
func fullClassify(block []byte, s *Set) []hit {
	var want []hit
	lines(block, func(off int, line []byte) {
		if ev, err := audit.Decode(line); err == nil {
			if k := Classify(ev, s); k != 0 {
				want = append(want, hit{off, k})
			}
		}
	})
	return want
}

func hitsOf(hs []Hit) []hit {
	var out []hit
	for _, h := range hs {
		out = append(out, hit{h.Offset, h.Kinds})
	}
	return out
}

// Watch-set modes of the fuzz target, bits of mode.
const (
	modeLineTokens  = 1 << iota // the lines' credential JTIs as Token watches
	modeLineCreds               // ... as ActorCredential watches
	modeLineUsers               // the lines' user names as ActorUser watches
	modeExtraTokens             // the keys of extra as Token watches
	modeExtraUsers              // ... as ActorUser watches
	modeExtraCreds              // ... as ActorCredential watches
	modeBounds                  // bounds around the lines' times, from the fuzz input
)

// fuzzWatches builds watches from the lines of block (what they hold, so
// that hits are likely) and from extra (comma-separated keys).
func fuzzWatches(block []byte, extra string, mode uint8, from, until int64) []Watch {
	var ws []Watch
	add := func(k Kind, key string, ts string) {
		w := Watch{Kind: k, Key: key}
		if mode&modeBounds != 0 {
			base, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				base = t0
			}
			w.From = base.Add(time.Duration(from % int64(time.Hour)))
			w.Until = base.Add(time.Duration(until % int64(time.Hour)))
		}
		ws = append(ws, w)
	}
	lines(block, func(_ int, line []byte) {
		ev, err := audit.Decode(line)
		if err != nil {
			return
		}
		if jti := lineage.CredentialJTI(ev.User); jti != "" {
			if mode&modeLineTokens != 0 {
				add(Token, jti, ev.RequestReceivedTimestamp)
			}
			if mode&modeLineCreds != 0 {
				add(ActorCredential, jti, ev.RequestReceivedTimestamp)
			}
		}
		if name := ev.Username(); name != "" && mode&modeLineUsers != 0 {
			add(ActorUser, name, ev.RequestReceivedTimestamp)
		}
	})
	for _, key := range strings.Split(extra, ",") {
		for _, m := range []struct {
			bit  uint8
			kind Kind
		}{{modeExtraTokens, Token}, {modeExtraUsers, ActorUser}, {modeExtraCreds, ActorCredential}} {
			if key != "" && mode&m.bit != 0 {
				add(m.kind, key, "")
			}
		}
	}
	return ws
}

// checkBlock checks Block against a full decode of block.
func checkBlock(t *testing.T, block []byte, s *Set) {
	t.Helper()
	want := fullClassify(block, s)
	var m Matcher
	got, c := m.Block(nil, block, s)
	if diff := cmp.Diff(want, hitsOf(got)); diff != "" {
		t.Fatalf("Block(%q) (-full decode +block):\n%s", block, diff)
	}
	if c.Hits != len(got) || c.Candidates < c.Decoded || c.Decoded < c.Hits+c.Malformed {
		t.Fatalf("Block(%q) counts %+v inconsistent with %d hits", block, c, len(got))
	}
	// The same with the pre-filter's marks of block.
	var f prefilter.Filter
	f.Block(nil, block)
	got, c = m.BlockMarked(got[:0], block, s, f.Marks())
	if diff := cmp.Diff(want, hitsOf(got)); diff != "" {
		t.Fatalf("BlockMarked(%q) (-full decode +block):\n%s", block, diff)
	}
	if c.Hits != len(got) || c.Candidates < c.Decoded || c.Decoded < c.Hits+c.Malformed {
		t.Fatalf("BlockMarked(%q) counts %+v inconsistent with %d hits", block, c, len(got))
	}
}

func FuzzMatch(f *testing.F) {
	for _, line := range genuineLines(f) {
		f.Add([]byte(line), "", uint8(modeLineUsers), int64(0), int64(0))
	}
	for _, sd := range adversarial(genuineLines(f)) {
		f.Add([]byte(sd.line), sd.extra, sd.mode, int64(-time.Second), int64(time.Second))
	}
	neighbours := genuineLines(f)
	f.Fuzz(func(t *testing.T, block []byte, extra string, mode uint8, from, until int64) {
		ws := fuzzWatches(block, extra, mode, from, until)
		s := &Set{}
		for _, w := range ws {
			_ = s.Add(w)
		}
		checkBlock(t, block, s)
		// The same among genuine neighbours, without a final newline.
		wrapped := []byte(neighbours[0] + "\n" + string(block) + "\n" + neighbours[1])
		checkBlock(t, wrapped, s)
	})
}

// seed is an adversarial fuzz seed: a block, extra watch keys and a mode.
type seed struct {
	name  string
	line  string
	extra string
	mode  uint8
}

const x509 = "X509SHA256=59b31e704fec74a956a1c7980cb1b1b1b2558a0a6d72b027ca4cb4ac05237880"

// adversarial derives the seeds that try to hide a match from the
// byte-level search from a genuine line.
func adversarial(genuine []string) []seed {
	g := genuine[0] // list secrets by kubernetes-admin, client certificate
	cred := func(v string) string { return strings.Replace(g, x509, v, 1) }
	withJTI := cred("JTI=" + jtiA)
	all := uint8(modeLineTokens | modeLineCreds | modeLineUsers)
	r := strings.Replace
	cm := r(g, `"resource":"secrets"`, `"resource":"configmaps"`, 1) // no sensitive action
	return []seed{
		{"jti credential", withJTI, "", all},
		{"jti credential, bounds", withJTI, "", all | modeBounds},
		{"x509 credential", g, "59b31e704fec74a956a1c7980cb1b1b1b2558a0a6d72b027ca4cb4ac05237880", modeExtraTokens | modeExtraCreds},
		{"escaped jti digit", cred(`JTI=\u0038` + jtiA[1:]), "", all},
		{"escaped JTI prefix", cred(`\u004aTI=` + jtiA), "", all},
		{"escaped dash, upper hex", cred(`JTI=832496d6\u002De170-47c8-93f8-db734a6d468b`), "", all},
		{"escaped username key", r(g, `"username"`, `"us\u0065rname"`, 1), "kubernetes-admin", modeExtraUsers},
		{"escaped user key", r(g, `"user":`, `"\u0075ser":`, 1), "kubernetes-admin", modeExtraUsers},
		{"escaped name value", r(g, `kubernetes-admin`, `kubernetes\u002dadmin`, 1), "kubernetes-admin", modeExtraUsers},
		{"quote in name", r(g, `kubernetes-admin`, `kubernetes\"admin`, 1), `kubernetes"admin`, modeExtraUsers},
		{"non-ascii name", r(g, `kubernetes-admin`, "kübernetes", 1), "kübernetes", modeExtraUsers},
		{"invalid utf-8 name", r(g, `kubernetes-admin`, "kube\xffadmin", 1), "kube\ufffdadmin", modeExtraUsers},
		{"duplicate user key", r(g, `"sourceIPs"`, `"user":{"username":"alice"},"sourceIPs"`, 1), "alice", modeExtraUsers},
		{"duplicate user key, null", r(g, `"sourceIPs"`, `"user":null,"sourceIPs"`, 1), "kubernetes-admin", modeExtraUsers},
		{"duplicate username key", r(g, `"username":"kubernetes-admin"`, `"username":"kubernetes-admin","username":"alice"`, 1), "alice,kubernetes-admin", modeExtraUsers},
		{"username not a string", r(g, `"username":"kubernetes-admin"`, `"username":7`, 1), "7", modeExtraUsers},
		{"spaces around keys", r(g, `"user":{"username":"kubernetes-admin",`, `"user" : { "username" : "kubernetes-admin" ,`, 1), "kubernetes-admin", modeExtraUsers},
		{"jti in requestURI", r(g, `?limit=500`, `?labelSelector=JTI=`+jtiA, 1), jtiA, modeExtraTokens},
		{"jti as an annotation value", r(g, `"annotations":{`, `"annotations":{"authentication.kubernetes.io/issued-credential-id":"JTI=`+jtiA+`",`, 1), jtiA, modeExtraTokens},
		{"two jti credentials", cred("JTI=" + jtiA + `","JTI=` + jtiB), jtiB, modeExtraTokens | modeExtraCreds},
		{"empty jti first", cred(`JTI=","JTI=` + jtiB), jtiB, modeExtraTokens},
		{"upper-case jti, lower-case watch", cred("JTI=" + strings.ToUpper(jtiA)), jtiA, modeExtraTokens | modeExtraCreds},
		{"lower-case jti, upper-case watch", withJTI, strings.ToUpper(jtiA), modeExtraTokens | modeExtraCreds},
		{"mixed-case jti", cred("JTI=832496D6-e170-47C8-93f8-DB734a6d468b"), jtiA, modeExtraTokens},
		{"jti the filter lets through", cred("JTI=" + filterTwin(jtiA)), jtiA, modeExtraTokens | modeExtraCreds},
		{"jti the filter lets through, odd watch", cred("JTI=" + filterTwin(jtiA)), jtiA + ",not-a-uuid", modeExtraTokens},
		{"odd jti", cred("JTI=not-a-uuid"), "not-a-uuid", modeExtraTokens},
		{"odd jti with escape", cred(`JTI=not-a-\u0026uuid`), "not-a-&uuid", modeExtraTokens},
		{"duplicate extra key", r(withJTI, `"extra":{`, `"extra":{"authentication.kubernetes.io/credential-id":["JTI=`+jtiB+`"],`, 1), jtiA + "," + jtiB, modeExtraTokens},
		{"impersonated user's jti", r(g, `"sourceIPs"`, `"impersonatedUser":{"username":"bob","extra":{"authentication.kubernetes.io/credential-id":["JTI=`+jtiA+`"]}},"sourceIPs"`, 1), jtiA + ",bob", modeExtraTokens | modeExtraUsers},
		{"username in nested requestObject", r(g, `"requestReceivedTimestamp"`, `"requestObject":{"spec":{"user":{"username":"alice"},"username":"alice"}},"requestReceivedTimestamp"`, 1), "alice", modeExtraUsers},
		{"legacy", r(g, `"annotations":{`, `"annotations":{"authentication.k8s.io/legacy-token":"system:serviceaccount:ns:sa",`, 1), "", 0},
		{"legacy empty", r(g, `"annotations":{`, `"annotations":{"authentication.k8s.io/legacy-token":"",`, 1), "", 0},
		{"legacy escaped", r(g, `"annotations":{`, `"annotations":{"authentication.k8s.io/leg\u0061cy-token":"system:serviceaccount:ns:sa",`, 1), "", 0},
		{"escaped sensitive resource", r(r(g, `"verb":"list"`, `"verb":"get"`, 1), `"resource":"secrets"`, `"resource":"\u0070ods","subresource":"exec"`, 1), "kubernetes-admin", modeExtraUsers},
		{"followed user, not sensitive", r(g, `"resource":"secrets"`, `"resource":"configmaps"`, 1), "kubernetes-admin", modeExtraUsers},
		{"impersonation by a followed user", r(g, `"sourceIPs"`, `"impersonatedUser":{"username":"bob"},"sourceIPs"`, 1), "kubernetes-admin", modeExtraUsers},
		{"escaped objectRef key", r(g, `"objectRef"`, `"object\u0052ef"`, 1), "kubernetes-admin", modeExtraUsers},
		{"escaped resource key", r(g, `"resource":"secrets"`, `"res\u006furce":"secrets"`, 1), "kubernetes-admin", modeExtraUsers},
		{"escaped resource value", r(g, `"resource":"secrets"`, `"resource":"s\u0065crets"`, 1), "kubernetes-admin", modeExtraUsers},
		{"escaped impersonatedUser", r(cm, `"sourceIPs"`, `"imp\u0065rsonatedUser":{"username":"bob"},"sourceIPs"`, 1), "kubernetes-admin", modeExtraUsers},
		{"impersonation, no sensitive resource", r(cm, `"sourceIPs"`, `"impersonatedUser":{"username":"bob"},"sourceIPs"`, 1), "kubernetes-admin", modeExtraUsers},
		{"impersonatedUser null", r(cm, `"sourceIPs"`, `"impersonatedUser":null,"sourceIPs"`, 1), "kubernetes-admin", modeExtraUsers},
		{"secrets only in requestURI", cm, "kubernetes-admin", modeExtraUsers},
		{"secrets as a name", r(cm, `"namespace":"team-a"`, `"name":"secrets","namespace":"team-a"`, 1), "kubernetes-admin", modeExtraUsers},
		{"brace in an objectRef string", r(g, `"objectRef":{`, `"objectRef":{"name":"a}b",`, 1), "kubernetes-admin", modeExtraUsers},
		{"open brace in an objectRef string", r(g, `"objectRef":{`, `"objectRef":{"name":"a{b",`, 1), "kubernetes-admin", modeExtraUsers},
		{"open brace in an objectRef string, not sensitive", r(cm, `"objectRef":{`, `"objectRef":{"name":"a{b",`, 1), "kubernetes-admin", modeExtraUsers},
		{"subresource as a value", r(g, `"resource":"secrets"`, `"resource":"pods","name":"subresource"`, 1), "kubernetes-admin", modeExtraUsers},
		{"resource not a string", r(g, `"resource":"secrets"`, `"resource":5`, 1), "kubernetes-admin", modeExtraUsers},
		{"resource key after its value's quote", r(g, `"resource":"secrets"`, `"resource" : "secrets" `, 1), "kubernetes-admin", modeExtraUsers},
		{"object in objectRef", r(g, `"objectRef":{`, `"objectRef":{"x":{"y":1},`, 1), "kubernetes-admin", modeExtraUsers},
		{"array in objectRef", r(g, `"objectRef":{`, `"objectRef":{"x":["resource"],`, 1), "kubernetes-admin", modeExtraUsers},
		{"duplicate resource key, sensitive last", r(g, `"resource":"secrets"`, `"resource":"configmaps","resource":"secrets"`, 1), "kubernetes-admin", modeExtraUsers},
		{"duplicate resource key, sensitive first", r(g, `"resource":"secrets"`, `"resource":"secrets","resource":"configmaps"`, 1), "kubernetes-admin", modeExtraUsers},
		{"duplicate objectRef", r(g, `"objectRef":{`, `"objectRef":{"resource":"configmaps"},"objectRef":{`, 1), "kubernetes-admin", modeExtraUsers},
		{"duplicate objectRef, sensitive first", r(g, `"responseStatus"`, `"objectRef":{"resource":"configmaps"},"responseStatus"`, 1), "kubernetes-admin", modeExtraUsers},
		{"objectRef null", r(g, `"objectRef":{"resource":"secrets","namespace":"team-a","apiVersion":"v1"}`, `"objectRef":null`, 1), "kubernetes-admin", modeExtraUsers},
		{"spaces in objectRef", r(g, `"objectRef":{"resource":"secrets",`, `"objectRef" : { "resource" : "secrets" ,`, 1), "kubernetes-admin", modeExtraUsers},
		{"pods exec", r(r(g, `"verb":"list"`, `"verb":"create"`, 1), `"resource":"secrets"`, `"resource":"pods","subresource":"exec"`, 1), "kubernetes-admin", modeExtraUsers},
		{"pods exec, subresource first", r(r(g, `"verb":"list"`, `"verb":"create"`, 1), `"resource":"secrets"`, `"subresource":"exec","resource":"pods"`, 1), "kubernetes-admin", modeExtraUsers},
		{"pods, no subresource", r(g, `"resource":"secrets"`, `"resource":"pods"`, 1), "kubernetes-admin", modeExtraUsers},
		{"nodes proxy", r(r(g, `"verb":"list"`, `"verb":"get"`, 1), `"resource":"secrets"`, `"resource":"nodes","subresource":"proxy"`, 1), "kubernetes-admin", modeExtraUsers},
		{"rbac write", r(r(g, `"verb":"list"`, `"verb":"create"`, 1), `"resource":"secrets"`, `"resource":"clusterrolebindings","apiGroup":"rbac.authorization.k8s.io"`, 1), "kubernetes-admin", modeExtraUsers},
		{"csr create", r(r(g, `"verb":"list"`, `"verb":"create"`, 1), `"resource":"secrets"`, `"resource":"certificatesigningrequests","apiGroup":"certificates.k8s.io"`, 1), "kubernetes-admin", modeExtraUsers},
		{"objectRef torn at the line end", g[:strings.Index(g, `"objectRef"`)+30] + "\n" + g, "kubernetes-admin", modeExtraUsers},
		{"huge line", r(withJTI, `"userAgent":"`, `"userAgent":"`+strings.Repeat("JTI=x{\"user\":{", 4000), 1), "", all},
		{"torn line", withJTI[:len(withJTI)/2], jtiA, modeExtraTokens},
		{"several lines", g + "\n" + withJTI + "\n\n" + withJTI + "\n", "", all},
		{"crlf", withJTI + "\r\n" + g, "", all},
	}
}

func TestAdversarial(t *testing.T) {
	genuine := genuineLines(t)
	for _, sd := range adversarial(genuine) {
		t.Run(sd.name, func(t *testing.T) {
			ws := fuzzWatches([]byte(sd.line), sd.extra, sd.mode, int64(-time.Second), int64(time.Second))
			s := &Set{}
			for _, w := range ws {
				_ = s.Add(w)
			}
			checkBlock(t, []byte(sd.line), s)
		})
	}
}

// TestAdversarialHits pins what some seeds must match, so that the
// differential checks above compare something.
func TestAdversarialHits(t *testing.T) {
	want := map[string]Kind{
		"jti credential":                                   Token | ActorCredential | ActorUser,
		"escaped jti digit":                                Token | ActorCredential | ActorUser,
		"escaped username key":                             ActorUser,
		"escaped name value":                               ActorUser,
		"quote in name":                                    ActorUser,
		"invalid utf-8 name":                               ActorUser,
		"duplicate user key":                               ActorUser,
		"duplicate username key":                           ActorUser,
		"spaces around keys":                               ActorUser,
		"odd jti":                                          Token,
		"upper-case jti, lower-case watch":                 Token | ActorCredential,
		"lower-case jti, upper-case watch":                 Token | ActorCredential,
		"mixed-case jti":                                   Token,
		"jti the filter lets through":                      0,
		"odd jti with escape":                              Token,
		"two jti credentials":                              0,
		"empty jti first":                                  Token,
		"duplicate extra key":                              Token,
		"legacy":                                           Legacy,
		"escaped objectRef key":                            ActorUser,
		"escaped resource value":                           ActorUser,
		"escaped impersonatedUser":                         ActorUser,
		"impersonation, no sensitive resource":             ActorUser,
		"impersonatedUser null":                            0,
		"secrets only in requestURI":                       0,
		"secrets as a name":                                0,
		"brace in an objectRef string":                     ActorUser,
		"open brace in an objectRef string":                ActorUser,
		"open brace in an objectRef string, not sensitive": 0,
		"subresource as a value":                           0,
		"object in objectRef":                              ActorUser,
		"duplicate resource key, sensitive last":           ActorUser,
		"duplicate resource key, sensitive first":          0,
		"duplicate objectRef":                              ActorUser,
		"duplicate objectRef, sensitive first":             0,
		"spaces in objectRef":                              ActorUser,
		"pods exec":                                        ActorUser,
		"pods exec, subresource first":                     ActorUser,
		"pods, no subresource":                             0,
		"nodes proxy":                                      ActorUser,
		"rbac write":                                       ActorUser,
		"csr create":                                       ActorUser,
		"escaped sensitive resource":                       ActorUser,
		"followed user, not sensitive":                     0,
		"legacy escaped":                                   Legacy,
		"legacy empty":                                     0,
		"impersonated user's jti":                          0,
		"username in nested requestObject":                 0,
		"jti in requestURI":                                0,
		"x509 credential":                                  0,
	}
	for _, sd := range adversarial(genuineLines(t)) {
		k, ok := want[sd.name]
		if !ok {
			continue
		}
		ws := fuzzWatches([]byte(sd.line), sd.extra, sd.mode, 0, 0)
		s := &Set{}
		for _, w := range ws {
			_ = s.Add(w)
		}
		var m Matcher
		hs, _ := m.Block(nil, []byte(sd.line), s)
		var got Kind
		for _, h := range hs {
			got |= h.Kinds
		}
		if got != k {
			t.Errorf("%s: Block kinds = %v, want %v", sd.name, got, k)
		}
	}

}

// filterTwin returns a uuid other than key that the filter of a set
// watching key alone lets through: a false positive the maps must rule out.
func filterTwin(key string) string {
	s := &Set{}
	if err := s.Add(Watch{Kind: Token, Key: key}); err != nil {
		panic(err)
	}
	for i := 1; ; i++ {
		u := fmt.Sprintf("%08x-1111-4222-8333-%012x", i, i)
		if id, _ := parseUUID(u); s.ids.mayHold(&id) {
			return u
		}
	}
}
