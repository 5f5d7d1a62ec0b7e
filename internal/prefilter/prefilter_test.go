package prefilter

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// tokenCreate is a genuine kube-apiserver v1.35.4 line (RequestReceived).
const tokenCreate = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"722a57b9-e6b8-4e47-8819-a27c341394a0","stage":"RequestReceived","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/app/token","verb":"create","user":{"username":"kubernetes-admin","groups":["system:masters","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.35.4 (linux/amd64) kubernetes/0000000","objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","apiVersion":"v1","subresource":"token"},"requestReceivedTimestamp":"2026-11-26T23:09:25.383216Z","stageTimestamp":"2026-11-26T23:09:25.383216Z"}`

func TestFilterLines(t *testing.T) {
	tests := []struct {
		name      string
		give      string
		candidate bool
		match     bool
	}{
		{"genuine token create", tokenCreate, true, true},
		{"spaces and key order",
			`{ "objectRef" : { "subresource" : "token" , "resource" : "serviceaccounts" } , "verb" : "create" }`, true, true},
		{"escaped t", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"\u0074oken"}}`, true, true},
		{"escaped o", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"t\u006fken"}}`, true, true},
		{"escaped K upper hex", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"to\u006Ben"}}`, true, true},
		{"escaped e", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"tok\u0065n"}}`, true, true},
		{"escaped N upper hex", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"toke\u006E"}}`, true, true},
		{"all escaped", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"\u0074\u006f\u006b\u0065\u006e"}}`, true, true},
		{"escaped keys and other values", `{"v\u0065rb":"cr\u0065ate","objectRef":{"resourc\u0065":"serviceaccounts","subresource":"token"}}`, true, true},
		{"get on token (decoy)", strings.Replace(tokenCreate, `"verb":"create"`, `"verb":"get"`, 1), true, false},
		{"create secrets/x/token (decoy)",
			`{"verb":"create","objectRef":{"resource":"secrets","name":"x","subresource":"token"}}`, true, false},
		{"subjectaccessreview body (decoy)",
			`{"verb":"create","objectRef":{"resource":"subjectaccessreviews"},"requestObject":{"spec":{"resourceAttributes":{"verb":"create","resource":"serviceaccounts","subresource":"token"}}}}`, true, false},
		{"no token anywhere", `{"verb":"list","objectRef":{"resource":"pods"},"requestURI":"/api/v1/pods?limit=500\u0026resourceVersion=0"}`, false, false},
		{"word without quotes", `{"verb":"create","userAgent":"token-minter","objectRef":{"resource":"serviceaccounts","subresource":"tokens"}}`, false, false},
		{"upper-case value", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"Token"}}`, false, false},
		{"wrong key case", `{"Verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"}}`, true, false},
		{"malformed", `{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"`, true, false},
		{"code of the wrong type", strings.Replace(tokenCreate, `"stage":"RequestReceived"`, `"stage":"ResponseComplete","responseStatus":{"code":"201"}`, 1), true, true},
		{"user agent of the wrong type", strings.Replace(tokenCreate, `"userAgent":"kubectl/v1.35.4 (linux/amd64) kubernetes/0000000"`, `"userAgent":["kubectl"]`, 1), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Candidates(nil, []byte(tt.give))
			if (len(got) > 0) != tt.candidate {
				t.Errorf("Candidates(%q) = %v, want candidate %v", tt.give, got, tt.candidate)
			}
			var f Filter
			m, c := f.Block(nil, []byte(tt.give))
			if (len(m) > 0) != tt.match || c.Matches != len(m) {
				t.Errorf("Block(%q) = %d matches (counts %+v), want match %v", tt.give, len(m), c, tt.match)
			}
			for _, x := range m {
				if (len(x.Event.Malformed) > 0) != (c.MalformedFields > 0) {
					t.Errorf("Block(%q): event %+v, counts %+v", tt.give, x.Event, c)
				}
			}
		})
	}
}

func TestCandidatesBlock(t *testing.T) {
	lit := `{"subresource":"token"}`
	esc := `{"subresource":"t\u006fken"}`
	both := `{"a":"token","b":"\u0074oken"}`
	plain := `{"verb":"get"}`
	block := strings.Join([]string{plain, lit, plain, esc, both, plain, lit}, "\n")
	got := Candidates(nil, []byte(block))
	var lines []string
	for _, s := range got {
		lines = append(lines, block[s.Start:s.End])
	}
	want := []string{lit, esc, both, lit}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("Candidates lines (-want +got):\n%s", diff)
	}
	// Offsets point at line starts.
	for _, s := range got {
		if s.Start > 0 && block[s.Start-1] != '\n' {
			t.Errorf("span %v does not start a line", s)
		}
	}
}

// TestGenuineLog checks the filter against full decoding on a genuine
// kube-apiserver log and that it finds its token creates.
func TestGenuineLog(t *testing.T) {
	block := genuineLog(t)
	var f Filter
	got, c := f.Block(nil, block)
	want := fullDecode(block)
	if diff := cmp.Diff(want, offsets(got)); diff != "" {
		t.Errorf("Block offsets (-full decode +filter):\n%s", diff)
	}
	if len(got) != 2 || c.Malformed != 0 {
		t.Errorf("Block = %d matches, %+v; want 2 matches, none malformed", len(got), c)
	}
	if lines := bytes.Count(block, []byte{'\n'}); c.Candidates*100 > lines {
		t.Errorf("%d candidates of %d lines: pre-filter lets too much through", c.Candidates, lines)
	}
}

func genuineLog(tb testing.TB) []byte {
	tb.Helper()
	f, err := os.Open("testdata/kube-apiserver-v1.35.4-audit.log.gz")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fullDecode returns the offsets of the token creates of block, decoding
// every line: the reference the pre-filter must agree with.
func fullDecode(block []byte) []int {
	var offs []int
	for off := 0; off <= len(block); {
		end := bytes.IndexByte(block[off:], '\n')
		if end < 0 {
			end = len(block)
		} else {
			end += off
		}
		if ev, err := audit.Decode(block[off:end]); err == nil && ev.IsTokenCreate() {
			offs = append(offs, off)
		}
		off = end + 1
	}
	return offs
}

func offsets(ms []Match) []int {
	var offs []int
	for _, m := range ms {
		offs = append(offs, m.Offset)
	}
	return offs
}

// FuzzFilter is the differential test: on any block, the pre-filter and
// decode must find exactly the token creates that decoding every line finds.
func FuzzFilter(f *testing.F) {
	f.Add([]byte(tokenCreate))
	f.Add([]byte(`{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"\u0074oken"}}`))
	f.Add([]byte(`{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"toke\u006E"}}` + "\n" + `{"verb":"get"}`))
	f.Add([]byte("{}\n\n" + `{"verb":"create","objectRef":{"subresource":"token","resource":"serviceaccounts"}}` + "\n"))
	f.Add([]byte(`{"subresource":"token","annotations":{"authentication.k8s.io/legacy-token":"x","a":"\u006B\u0026"}}` + "\nlegacy-token"))
	f.Fuzz(func(t *testing.T, block []byte) {
		var flt Filter
		got, c := flt.Block(nil, block)
		want := fullDecode(block)
		if diff := cmp.Diff(want, offsets(got)); diff != "" {
			t.Fatalf("Block(%q) offsets (-full decode +filter):\n%s", block, diff)
		}
		if c.Matches != len(got) || c.Candidates < c.Decoded || c.Decoded < c.Matches+c.Malformed {
			t.Fatalf("Block(%q) counts %+v inconsistent with %d matches", block, c, len(got))
		}
		if diff := cmp.Diff(refMarks(block), *flt.Marks(), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("Block(%q) marks (-reference +filter):\n%s", block, diff)
		}
		if diff := cmp.Diff(Candidates(nil, block), candidates(nil, block, &Marks{})); diff != "" {
			t.Fatalf("Candidates(%q) (-without marks +with marks):\n%s", block, diff)
		}
	})
}

// refMarks returns the marks of block found byte by byte: the reference
// Filter.Marks must agree with.
func refMarks(block []byte) Marks {
	var mk Marks
	for k := range block {
		if block[k] == '\\' && k+5 < len(block) && string(block[k+1:k+4]) == "u00" {
			if v, err := strconv.ParseUint(string(block[k+4:k+6]), 16, 8); err == nil {
				mk.Escapes = append(mk.Escapes, Escape{Pos: k, Byte: byte(v)})
			}
		}
		if bytes.HasPrefix(block[k:], []byte(`legacy-token"`)) {
			mk.Legacy = append(mk.Legacy, k)
		}
	}
	return mk
}

func TestMarks(t *testing.T) {
	legacy := `{"annotations":{"authentication.k8s.io/legacy-token":"system:serviceaccount:ns:sa"}}`
	tests := []struct {
		name string
		give string
	}{
		{"none", `{"verb":"get"}`},
		{"legacy", legacy},
		{"legacy after a token", `{"subresource":"token",` + legacy[1:]},
		{"legacy at the block end", `{"a":"legacy-token`},
		{"two legacy", legacy + "\n" + legacy + legacy},
		{"escapes of either case", `{"a":"\u0026\u006B\u006b\u00zz\u01","b":"\\u0074"}`},
		{"escape at the block end", `"\u0074`},
		{"escape cut at the block end", `"\u007`},
		{"token escaped and legacy", `{"s":"\u0074oken","x":"legacy-token"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Filter
			f.Block(nil, []byte(tt.give))
			if diff := cmp.Diff(refMarks([]byte(tt.give)), *f.Marks(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Marks of %q (-reference +filter):\n%s", tt.give, diff)
			}
		})
	}
}
