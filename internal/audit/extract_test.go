package audit

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// extract feeds line to an Extractor in pieces of piece bytes.
func extract(line []byte, piece int) (*Event, int, error) {
	x := NewExtractor()
	defer x.Close()
	for len(line) > 0 {
		n := min(piece, len(line))
		x.Write(line[:n])
		line = line[n:]
	}
	return x.Finish()
}

// decodeBound is what Extract must give: Decode, then Bound.
func decodeBound(line []byte) (*Event, error) {
	e, err := Decode(line)
	if err == nil {
		Bound(e)
	}
	return e, err
}

func checkExtract(t *testing.T, line []byte, piece int) *Event {
	t.Helper()
	want, werr := decodeBound(line)
	got, kept, gerr := extract(line, piece)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("Decode error %v, Extractor error %v, on %.200q", werr, gerr, line)
	}
	if werr != nil {
		return nil
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Extractor differs from Decode+Bound on %.200q (-want +got):\n%.3000s", line, diff)
	}
	if kept > 4<<20 {
		t.Errorf("kept %d bytes", kept)
	}
	return got
}

// TestExtract: the Extractor agrees with Decode and Bound on lines that fit,
// and on lines with every kind of oversized field.
func TestExtract(t *testing.T) {
	big := strings.Repeat("x", 5<<20)
	many := func(n int, f func(i int) string) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(f(i))
		}
		return b.String()
	}
	tc := `"verb":"create","objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","subresource":"token"},"user":{"username":"mallory","groups":["dev"]}`
	tests := []struct {
		name string
		give string
	}{
		{"canonical", canonical},
		{"formatting variants", reorder(strings.NewReplacer(`":`, `" :  `, `"verb"`, `"\u0076erb"`, `/api/v1/`, `\/api\/v1\/`).Replace(canonical))},
		{"padded audience", `{` + tc + `,"requestObject":{"spec":{"audiences":["` + big + `"]}}}`},
		{"many audiences", `{` + tc + `,"requestObject":{"spec":{"audiences":[` + many(100000, func(i int) string { return fmt.Sprintf(`"a%d"`, i) }) + `]}}}`},
		{"huge response skipped", `{` + tc + `,"responseObject":{"status":{"token":"` + big + `"},"x":[[[{"a":1e5}]]]}}`},
		{"annotation", `{` + tc + `,"annotations":{"z":"` + big + `","a":"allow"}}`},
		{"many annotations", `{` + tc + `,"annotations":{` + many(5000, func(i int) string { return fmt.Sprintf(`"k%d":"v%d","k%d":"w"`, 5000-i, i, i) }) + `}}`},
		{"source IPs", `{` + tc + `,"sourceIPs":[` + many(100000, func(i int) string { return fmt.Sprintf(`"10.0.%d.%d"`, i/256, i%256) }) + `]}`},
		{"extra", `{"user":{"username":"u","extra":{` + many(300, func(i int) string {
			return fmt.Sprintf(`"k%03d":[%s]`, i, many(70, func(j int) string { return `"v"` }))
		}) + `}},"verb":"create"}`},
		{"escapes in long strings", `{` + tc + `,"userAgent":"` + strings.Repeat(`\u00e9\ud83d\ude00\n\"é`, 20000) + `"}`},
		{"invalid UTF-8 and surrogates", `{` + tc + `,"userAgent":"a` + "\xe2\x82\xff\xf0\x9f" + `\ud800\ud800\udc00\udc00x` + strings.Repeat("y", MaxString) + `"}`},
		{"wrong types", `{` + tc + `,"responseStatus":{"code":"201"},"sourceIPs":[1,"` + big + `"],"annotations":{"a":"` + big + `","b":2}}`},
		{"duplicates", `{` + tc + `,"userAgent":"` + big + `","userAgent":"ua","user":{"username":"x","groups":["` + big + `"]},"user":{"username":"y"}}`},
		{"long number", `{` + tc + `,"responseStatus":{"code":` + strings.Repeat("1", 100) + `}}`},
		{"not a token create", `{"verb":"get","requestObject":{"spec":{"audiences":["` + big + `"]}}}`},
		{"torn", canonical[:len(canonical)/2]},
		{"trailing data", canonical + `{}`},
		{"empty", "  "},
		{"deep", `{"a":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`},
		{"deep enough", `{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, piece := range []int{1 << 20, 7} {
				if piece == 7 && len(tt.give) > 1<<20 {
					continue
				}
				checkExtract(t, []byte(tt.give), piece)
			}
		})
	}
}

// TestExtractOverLongLine: a token create of 17 MiB, over the follower's
// line bound, still gives its actor and target, bounded.
func TestExtractOverLongLine(t *testing.T) {
	pad := strings.Repeat("p", 17<<20)
	line := []byte(`{"kind":"Event","level":"Request","auditID":"a1","stage":"ResponseComplete","verb":"create","user":{"username":"mallory"},"annotations":{"x":"` + pad + `"},"objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","subresource":"token"},"requestObject":{"spec":{"audiences":["` + pad + `"]}},"responseStatus":{"code":201}}`)
	e, kept, err := extract(line, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !e.IsTokenCreate() || e.Username() != "mallory" || e.ObjectRef.Name != "app" || e.ResponseStatus.Code != 201 {
		t.Errorf("event %+v", e)
	}
	if want := []string{"annotations", "requestObject.spec.audiences"}; !cmp.Equal(e.Truncated, want) {
		t.Errorf("Truncated = %q, want %q", e.Truncated, want)
	}
	if kept > 64<<10 {
		t.Errorf("kept %d bytes of the line", kept)
	}
}

// FuzzExtract: on any line, in any pieces, the Extractor gives exactly what
// Decode and then Bound give.
func FuzzExtract(f *testing.F) {
	f.Add([]byte(canonical), uint8(5))
	f.Add([]byte(`{"user":{"username":"\u00ff\ud800","extra":{"a":["b",null]}},"annotations":{"a":null,"a":"b"}}`), uint8(0))
	f.Add([]byte(`{"verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"},"requestObject":{"spec":{"expirationSeconds":-0}},"responseStatus":{"code":1.5}}`), uint8(3))
	f.Fuzz(func(t *testing.T, line []byte, piece uint8) {
		checkExtract(t, line, int(piece)+1)
		if bytes.IndexByte(line, '\n') < 0 {
			checkExtract(t, append(line, " \r"...), len(line)+2)
		}
	})
}
