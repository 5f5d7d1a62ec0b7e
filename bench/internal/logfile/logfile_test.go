package logfile

import (
	"bytes"
	"os"
	"testing"
)

func TestEnsureGeneratesOnceAndCaches(t *testing.T) {
	dir := t.TempDir()
	const size = 256 << 10
	path, err := Ensure(dir, 7, size)
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := int64(len(first)); n < size/2 || n > size*2 {
		t.Errorf("generated %d bytes, want about %d", n, size)
	}
	if c := bytes.Count(first, []byte(`"subresource":"token"`)); c == 0 {
		t.Error("generated log holds no token subresource")
	}
	want, err := Expected(path)
	if err != nil || len(want) == 0 {
		t.Fatalf("Expected = %d requests, %v; want the attack scenario's", len(want), err)
	}
	for _, w := range want {
		if !bytes.Contains(first, []byte(`"auditID":"`+w.AuditID+`"`)) {
			t.Errorf("expected request %s is not in the log", w.AuditID)
		}
	}
	// A second call must reuse the file, not regenerate it.
	if err := os.WriteFile(path, []byte("cached\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := Ensure(dir, 7, size)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(again)
	if again != path || string(got) != "cached\n" {
		t.Errorf("Ensure regenerated the cached log (%s, %q)", again, got[:min(len(got), 20)])
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("cache holds %d entries, want the log and its expectations", len(entries))
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		give string
		want int64
	}{
		{"1GiB", 1 << 30}, {"1G", 1 << 30}, {"256MiB", 256 << 20}, {"300M", 300 << 20}, {"4096", 4096}, {"2K", 2048},
		{"", 0}, {"-1M", 0}, {"xM", 0},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.give)
		if (err != nil) != (tt.want == 0) || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d", tt.give, got, err, tt.want)
		}
	}
}

func TestName(t *testing.T) {
	if got := Name(1, 1<<30); got != "audit-bench-s1-1GiB.log" {
		t.Errorf("Name(1, 1GiB) = %q", got)
	}
}

func TestEnsureRepeat(t *testing.T) {
	dir := t.TempDir()
	src := []byte("{\"a\":1}\n{\"b\":2}\n")
	path, err := EnsureRepeat(dir, "rep.log", src, 50)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if want := bytes.Repeat(src, 4); !bytes.Equal(got, want) {
		t.Errorf("EnsureRepeat wrote %q, want %q", got, want)
	}
	if _, err := EnsureRepeat(dir, "bad.log", []byte("no newline"), 50); err == nil {
		t.Error("EnsureRepeat of a torn line succeeded")
	}
}

func TestEnsureLineage(t *testing.T) {
	dir := t.TempDir()
	const size = 256 << 10
	path, err := EnsureLineage(dir, 7, size)
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := Ensure(dir, 7, size); plain == path {
		t.Fatalf("lineage and plain logs share the cached name %s", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Count(b, []byte{'\n'})
	jti := bytes.Count(b, []byte(`"authentication.kubernetes.io/credential-id":["JTI=`))
	if frac := float64(jti) / float64(lines); frac < 0.5 || frac > 0.7 {
		t.Errorf("%d of %d lines carry a JTI credential id (%.2f), want about 0.6", jti, lines, frac)
	}
	ws := Workloads(7, 3)
	if len(ws) != 3 || ws[0] == ws[1] || Workloads(7, 3)[2] != ws[2] {
		t.Errorf("Workloads(7, 3) = %v: want 3 distinct, the same every call", ws)
	}
}
