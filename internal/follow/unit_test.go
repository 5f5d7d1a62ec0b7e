package follow

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestIdentitySame(t *testing.T) {
	fp := func(s string) []byte { return sha([]byte(s)) }
	tests := []struct {
		name string
		a, b Identity
		want bool
	}{
		{"same inode and fingerprint", Identity{1, 2, fp("x"), 1}, Identity{1, 2, fp("x"), 1}, true},
		{"same inode, fingerprint at another length", Identity{1, 2, fp("x"), 1}, Identity{1, 2, fp("xy"), 2}, true},
		{"same inode, other data (truncated, reused)", Identity{1, 2, fp("x"), 1}, Identity{1, 2, fp("y"), 1}, false},
		{"other inode", Identity{1, 2, fp("x"), 1}, Identity{1, 3, fp("x"), 1}, false},
		{"other device", Identity{1, 2, fp("x"), 1}, Identity{9, 2, fp("x"), 1}, false},
		{"plain and its gzip", Identity{1, 2, fp("x"), 1}, Identity{0, 0, fp("x"), 1}, true},
		{"gzip and its plain", Identity{0, 0, fp("x"), 1}, Identity{1, 2, fp("x"), 1}, true},
		{"plain and another gzip", Identity{1, 2, fp("x"), 1}, Identity{0, 0, fp("y"), 1}, false},
		{"gzip fingerprints at other lengths", Identity{0, 0, fp("x"), 1}, Identity{0, 0, fp("xy"), 2}, false},
		{"empty fingerprints", Identity{}, Identity{}, false},
	}
	for _, tt := range tests {
		if got := tt.a.Same(tt.b); got != tt.want {
			t.Errorf("%s: %v.Same(%v) = %v, want %v", tt.name, tt.a, tt.b, got, tt.want)
		}
	}
}

func TestLayoutParse(t *testing.T) {
	ts := time.Date(2026, 11, 27, 0, 0, 1, 0, time.UTC)
	l := newLayout("/var/log/kubernetes/audit/audit.log")
	tests := []struct {
		name             string
		isSib, gz, named bool
		key              orderKey
	}{
		{name: "audit.log"},
		{name: "audit-policy.yaml"},
		{name: "auditor.log"},
		{name: "other.log"},
		{name: "audit-2026-11-27T00-00-01.000.log", isSib: true, named: true, key: orderKey{t: ts}},
		{name: "audit-2026-11-27T00-00-01.000.log.gz", isSib: true, gz: true, named: true, key: orderKey{t: ts}},
		{name: "audit.log.1", isSib: true, key: orderKey{seq: -1}},
		{name: "audit.log.12.gz", isSib: true, gz: true, key: orderKey{seq: -12}},
		{name: "audit.log-20261127", isSib: true},
		{name: "audit.log.gz", isSib: true, gz: true},
	}
	for _, tt := range tests {
		isSib, gz, key, named := l.parse(tt.name)
		if isSib != tt.isSib || gz != tt.gz || named != tt.named || key != tt.key {
			t.Errorf("parse(%q) = %v, %v, %v, %v; want %v, %v, %v, %v", tt.name, isSib, gz, key, named, tt.isSib, tt.gz, tt.key, tt.named)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Path: "audit.log"}, true},
		{"no path", Config{}, false},
		{"bad start", Config{Path: "a", StartAt: "middle"}, false},
		{"negative", Config{Path: "a", MaxLine: -1}, false},
		{"gzip followed", Config{Path: "a.log.gz"}, false},
		{"gzip once", Config{Path: "a.log.gz", Once: true}, true},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// The genuine backup of a kube-apiserver, read compressed and plain.
func TestOnceGenuineGzip(t *testing.T) {
	gz := "testdata/audit-2026-11-26T23-09-18.959.log.gz"
	plain := filepath.Join(t.TempDir(), "audit.log")
	in, err := os.Open(gz)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := os.Create(plain)
	w := bufio.NewWriter(out)
	if _, err := w.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	out.Close()

	read := func(path string) []line {
		rec := newRecorder()
		f, err := New(Config{Path: path, Once: true, StartAt: StartBeginning, BlockSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Run(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
		got, losses := rec.snapshot()
		if len(losses) != 0 {
			t.Errorf("%s: losses %+v", path, losses)
		}
		return got
	}
	fromGz, fromPlain := read(gz), read(plain)
	if len(fromGz) != 1240 {
		t.Errorf("%d lines from the gzip, want 1240", len(fromGz))
	}
	if diff := cmp.Diff(texts(fromPlain), texts(fromGz)); diff != "" {
		t.Errorf("gzip and plain differ:\n%.500s", diff)
	}
	for i := range fromGz {
		if fromGz[i].pos.Offset != fromPlain[i].pos.Offset {
			t.Fatalf("line %d at %d in the gzip, %d in the plain file", i, fromGz[i].pos.Offset, fromPlain[i].pos.Offset)
		}
	}
	if !fromPlain[0].pos.ID.Same(fromGz[len(fromGz)-1].pos.ID) {
		t.Errorf("the plain file's identity %v does not match its gzip's %v", fromPlain[0].pos.ID, fromGz[0].pos.ID)
	}
	checkOffsets(t, filepath.Dir(plain), fromPlain)
}

func TestCorruptRotatedFileIsReportedAndSkipped(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, lines("a", 0, 2, 100)...)
	p := Position{ID: identityOf(t, live), Name: live, Offset: int64(len(seqLine("a", 0, 100)))}
	ra := filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log")
	mustRename(t, live, ra)
	bad := filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log.gz")
	if err := os.WriteFile(bad, []byte("\x1f\x8b\x08\x00not really gzip"), 0o600); err != nil {
		t.Fatal(err)
	}
	appendFile(t, live, lines("c", 0, 2, 100)...)
	rec := newRecorder()
	runFollower(t, Config{Path: live, Resume: &p}, rec)
	want := append(lines("a", 1, 2, 100), lines("c", 0, 2, 100)...)
	rec.waitLines(t, len(want))
	got, losses := rec.snapshot()
	if diff := cmp.Diff(want, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if len(losses) != 1 || losses[0].Reason != ReasonUnreadable || losses[0].File != bad {
		t.Errorf("losses = %+v, want one %s for %s", losses, ReasonUnreadable, bad)
	}
}

type failingHandler struct{ recorder }

var errStop = errors.New("stop here")

func (h *failingHandler) Block(context.Context, Block) error { return errStop }

func TestHandlerErrorStopsRun(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, "x\n")
	f, err := New(Config{Path: live, StartAt: StartBeginning})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background(), &failingHandler{}); !errors.Is(err, errStop) {
		t.Errorf("Run = %v, want the handler's error", err)
	}
	if err := f.Run(context.Background(), &failingHandler{}); err == nil {
		t.Error("second Run succeeded")
	}
}

func TestStats(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, lines("a", 0, 3, 100)...)
	rec := newRecorder()
	f, _ := runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)
	rec.waitLines(t, 3)
	st, _ := waitStats(f, func(st Stats) bool { return st.Lines >= 3 })
	if st.Lines != 3 || st.Bytes != 300 || st.File != live || st.Offset != 300 || st.LastGrowth.IsZero() {
		t.Errorf("Stats = %+v, want 3 lines, 300 bytes, at 300 in %s", st, live)
	}
}
