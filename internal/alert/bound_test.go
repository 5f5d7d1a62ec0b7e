package alert

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func actor() []Attr {
	return []Attr{String("user.name", "mallory"), String("k8s.cluster.name", "prod")}
}

func TestBounded(t *testing.T) {
	many := actor()
	for i := range MaxAttrs {
		many = append(many, String(fmt.Sprintf("kubernetes.audit.annotations.a%d", i), "v"))
	}
	tests := []struct {
		name          string
		give          Record
		wantChanged   bool
		wantTruncated []string
		wantDropped   int64
	}{
		{"small record unchanged", Record{Body: "b", Attrs: actor()}, false, nil, 0},
		{"40,004-character auditID", Record{Attrs: append(actor(), String("kubernetes.audit.auditID", strings.Repeat("a", 40004)))},
			true, []string{"kubernetes.audit.auditID"}, 0},
		{"3 MB audience", Record{Attrs: append(actor(), Strings("kubernetes.audit.requestObject.spec.audiences", []string{strings.Repeat("y", 3145500)}))},
			true, []string{"kubernetes.audit.requestObject.spec.audiences"}, 0},
		{"too many array items", Record{Attrs: append(actor(), Strings("kubernetes.audit.user.groups", make([]string, MaxArrayItems+1)))},
			true, []string{"kubernetes.audit.user.groups"}, 0},
		{"long body", Record{Body: strings.Repeat("b", MaxBodyBytes+1), Attrs: actor()}, true, []string{"body"}, 0},
		{"long key", Record{Attrs: append(actor(), String(strings.Repeat("k", MaxKeyBytes+1), "v"))},
			true, []string{audit.Cut(strings.Repeat("k", MaxKeyBytes+1), MaxKeyBytes)}, 0},
		{"too many attributes", Record{Attrs: many}, true, nil, 2},
		{"merges a list the record has", Record{Attrs: append(actor(), Strings(AttrTruncated, []string{"requestObject"}), String("x", strings.Repeat("x", MaxValueBytes+1)))},
			true, []string{"requestObject", "x"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := tt.give.Attrs[len(tt.give.Attrs)-1]
			got, changed := Bounded(tt.give)
			if changed != tt.wantChanged {
				t.Errorf("Bounded changed = %v, want %v", changed, tt.wantChanged)
			}
			tr, _ := got.Attr(AttrTruncated)
			if diff := cmp.Diff(tt.wantTruncated, tr.Strings); diff != "" {
				t.Errorf("%s (-want +got):\n%s", AttrTruncated, diff)
			}
			if d, _ := got.Attr(AttrDropped); d.Int != tt.wantDropped {
				t.Errorf("%s = %d, want %d", AttrDropped, d.Int, tt.wantDropped)
			}
			if v, _ := got.Attr("user.name"); v.Str != "mallory" {
				t.Errorf("user.name = %q, want the actor kept", v.Str)
			}
			if !cmp.Equal(orig, tt.give.Attrs[len(tt.give.Attrs)-1]) {
				t.Errorf("Bounded modified its argument")
			}
			checkBounds(t, got)
			again, changed := Bounded(got)
			if changed || !cmp.Equal(again, got) {
				t.Errorf("Bounded is not idempotent: changed=%v", changed)
			}
		})
	}
}

// checkBounds fails t when r exceeds a bound.
func checkBounds(t *testing.T, r Record) {
	t.Helper()
	if len(r.Body) > MaxBodyBytes {
		t.Errorf("body is %d bytes, want at most %d", len(r.Body), MaxBodyBytes)
	}
	total, n := len(r.Body), 0
	for _, a := range r.Attrs {
		if a.Key == AttrTruncated || a.Key == AttrDropped {
			continue
		}
		n++
		if len(a.Key) > MaxKeyBytes {
			t.Errorf("key of %d bytes", len(a.Key))
		}
		total += len(a.Key) + len(a.Value.Str)
		if len(a.Value.Str) > MaxValueBytes {
			t.Errorf("%s: value of %d bytes", a.Key, len(a.Value.Str))
		}
		if len(a.Value.Strings) > MaxArrayItems {
			t.Errorf("%s: %d items", a.Key, len(a.Value.Strings))
		}
		for _, s := range a.Value.Strings {
			total += len(s)
			if len(s) > MaxValueBytes {
				t.Errorf("%s: item of %d bytes", a.Key, len(s))
			}
		}
	}
	if n > MaxAttrs {
		t.Errorf("%d attributes, want at most %d", n, MaxAttrs)
	}
	// Once the budget is spent every value still keeps minValueBytes.
	if limit := MaxRecordBytes + MaxAttrs*(MaxKeyBytes+MaxArrayItems*minValueBytes); total > limit {
		t.Errorf("record holds %d bytes, want at most %d", total, limit)
	}
}

func TestCut(t *testing.T) {
	long := strings.Repeat("a", 300) + strings.Repeat("€", 100)
	tests := []struct {
		name string
		give string
		n    int
		want string // "" to check only the properties
	}{
		{"fits", "abc", 300, "abc"},
		{"ascii", strings.Repeat("a", 400), 300, ""},
		{"cut inside a character", long, 300, ""},
		{"invalid UTF-8", strings.Repeat("\x80", 400), 300, ""},
	}
	for _, tt := range tests {
		got := audit.Cut(tt.give, tt.n)
		if tt.want != "" && got != tt.want {
			t.Errorf("%s: cut = %q, want %q", tt.name, got, tt.want)
		}
		if len(got) > tt.n {
			t.Errorf("%s: cut is %d bytes, want at most %d", tt.name, len(got), tt.n)
		}
		if len(tt.give) > tt.n {
			if !strings.Contains(got, fmt.Sprintf("...[truncated %d bytes sha256:", len(tt.give))) {
				t.Errorf("%s: cut = %q, want the truncation suffix", tt.name, got)
			}
			if utf8.ValidString(tt.give) && !utf8.ValidString(got) {
				t.Errorf("%s: cut split a character", tt.name)
			}
			if other := audit.Cut(tt.give[:len(tt.give)-1]+"b", tt.n); other == got {
				t.Errorf("%s: two long values cut alike", tt.name)
			}
		}
	}
}

// FuzzBounded: whatever the attributes, the result is within the bounds,
// keeps the actor, and bounding again changes nothing.
func FuzzBounded(f *testing.F) {
	f.Add("body", "kubernetes.audit.auditID", strings.Repeat("a", 5000), 3, 1)
	f.Add("", "k", "", 0, 0)
	f.Add("\xff\xfe", "\x80", "ü€", 200, 70)
	f.Fuzz(func(t *testing.T, body, key, val string, nattrs, nitems int) {
		nattrs, nitems = nattrs%300, nitems%200
		if nattrs < 0 {
			nattrs = -nattrs
		}
		if nitems < 0 {
			nitems = -nitems
		}
		r := Record{Body: strings.Repeat(body, 3), Attrs: actor()}
		for i := range nattrs {
			items := make([]string, nitems)
			for j := range items {
				items[j] = val
			}
			r.Attrs = append(r.Attrs, String(fmt.Sprint(key, i), strings.Repeat(val, i%7)), Strings(key, items))
		}
		got, _ := Bounded(r)
		checkBounds(t, got)
		if v, _ := got.Attr("user.name"); v.Str != "mallory" {
			t.Fatalf("user.name = %q, want the actor kept", v.Str)
		}
		again, changed := Bounded(got)
		if changed || !reflect.DeepEqual(again, got) {
			t.Fatalf("Bounded is not idempotent")
		}
	})
}
