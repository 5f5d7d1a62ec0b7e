package linematch

import (
	"bytes"
	"testing"
)

func TestMayActRef(t *testing.T) {
	tests := []struct {
		name string
		ref  string // what follows "objectRef"
		want bool
	}{
		{"plain resource", `:{"resource":"configmaps","namespace":"a","name":"b","apiVersion":"v1"}`, false},
		{"secrets", `:{"resource":"secrets","namespace":"a","name":"b","apiVersion":"v1"}`, true},
		{"pods without subresource", `:{"resource":"pods","namespace":"a","name":"b"}`, false},
		{"pods exec", `:{"resource":"pods","namespace":"a","name":"b","subresource":"exec"}`, true},
		{"rbac", `:{"resource":"rolebindings","namespace":"a","apiGroup":"rbac.authorization.k8s.io"}`, true},
		{"spaces", ` : { "resource" : "configmaps" }`, false},
		{"null", `:null}`, false},
		{"a string, not a key", `","resource":"secrets"}`, false},
		{"no resource", `:{"namespace":"a"}`, false},
		{"brace inside a string", `:{"resource":"configmaps","name":"a}","x":"secrets"}`, true},
		{"nested object", `:{"x":{},"resource":"configmaps"}`, true},
		{"escape", `:{"resource":"secr\u0065ts"}`, true},
		{"second resource", `:{"resource":"configmaps","resource":"secrets"}`, true},
		{"not an object", `:["secrets"]`, true},
		{"unclosed", `:{"resource":"configmaps"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mayActRef([]byte(tt.ref), 0); got != tt.want {
				t.Errorf("mayActRef(%q) = %v, want %v", tt.ref, got, tt.want)
			}
		})
	}
}

func FuzzQuotes(f *testing.F) {
	for _, s := range []string{"", `"`, `""""""""`, `"resource":"configmaps","name":"a}"`, "\"\x00\xa2\"\"\xff\"\x22"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := quotes(b), bytes.Count(b, []byte(`"`)); got != want {
			t.Fatalf("quotes(%q) = %d, bytes.Count %d", b, got, want)
		}
	})
}
