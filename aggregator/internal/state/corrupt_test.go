package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// filled writes a store file with enough entries to span many pages and
// returns its path.
func filled(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, &clock{t: t0})
	for b := range 20 {
		var ch Change
		for i := range 100 {
			id := fmt.Sprintf("r-%d-%d", b, i)
			ch.Records = append(ch.Records, rec(id))
			ch.Done = append(ch.Done, "k-"+id)
		}
		mustCommit(t, s, ch)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// pageSize is bbolt's page size of the files the tests write.
var pageSize = os.Getpagesize()

// rewrite changes the file at path in place.
func rewrite(t *testing.T, path string, fn func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// metaChecksum is the offset of the checksum in a meta page: page header
// (16) + magic, version, page size, flags (16) + root (16) + freelist,
// pgid, txid (24).
const metaChecksum = 16 + 16 + 16 + 24

// TestOpenCorrupt: a damaged file is refused with an error that says it is
// corrupt (ErrCorrupt), never a panic or a fault, and never opened as an
// empty store.
func TestOpenCorrupt(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(b []byte) []byte
		reason  string
	}{
		{"zero bytes", func(b []byte) []byte { return nil }, "empty"},
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }, "truncated"},
		{"truncated within the meta pages", func(b []byte) []byte { return b[:pageSize+100] }, ""},
		{"garbage pages", func(b []byte) []byte {
			for i := 2 * pageSize; i < len(b); i++ {
				b[i] = byte(i*7 + 3)
			}
			return b
		}, ""},
		{"zeroed pages", func(b []byte) []byte {
			clear(b[2*pageSize:])
			return b
		}, ""},
		{"page ids swapped", func(b []byte) []byte {
			for p := 2; p*pageSize < len(b); p++ {
				b[p*pageSize] ^= 0x5a // the page's own id
			}
			return b
		}, ""},
		{"both meta checksums flipped", func(b []byte) []byte {
			b[metaChecksum] ^= 0xff
			b[pageSize+metaChecksum] ^= 0xff
			return b
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filled(t)
			rewrite(t, path, tt.corrupt)
			var (
				s   *Store
				err error
			)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Open panicked: %v", r)
					}
				}()
				s, err = Open(path, Options{})
			}()
			if err == nil {
				s.Close()
				t.Fatal("Open(corrupt file) succeeded")
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want an error matching ErrCorrupt", err)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, path) || !strings.Contains(msg, tt.reason) {
				t.Errorf("Open = %q, want one line naming the file and %q", msg, tt.reason)
			}
		})
	}
}

// TestOpenOneMetaDamaged: bbolt keeps two meta pages so that a torn meta
// write falls back to the previous transaction; one bad checksum is not
// corruption.
func TestOpenOneMetaDamaged(t *testing.T) {
	path := filled(t)
	rewrite(t, path, func(b []byte) []byte { b[metaChecksum] ^= 0xff; return b })
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open = %v, want the other meta page used", err)
	}
	s.Close()
}

func TestMoveAside(t *testing.T) {
	path := filled(t)
	rewrite(t, path, func(b []byte) []byte { return b[:len(b)/2] })
	_, err := Open(path, Options{})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
	moved, err := MoveAside(path, time.Date(2026, 5, 1, 12, 3, 4, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if want := path + ".corrupt-20260501T120304Z"; moved != want {
		t.Errorf("MoveAside = %q, want %q", moved, want)
	}
	if _, err := os.Stat(moved); err != nil {
		t.Errorf("moved file: %v", err)
	}
	s := open(t, path, nil)
	defer s.Close()
	if n := mustCommit(t, s, Change{Records: []alert.Record{rec("a")}}); n != 1 || s.Depth() != 1 {
		t.Errorf("fresh store after MoveAside: added %d, depth %d", n, s.Depth())
	}
}

// BenchmarkOpen measures Open's verification of a file of b records.
func BenchmarkOpen(b *testing.B) {
	path := filepath.Join(b.TempDir(), FileName)
	s := open(b, path, &clock{t: t0})
	for k := range 100 {
		var ch Change
		for i := range 1000 {
			id := fmt.Sprintf("r-%d-%d", k, i)
			ch.Records = append(ch.Records, rec(id))
			ch.Done = append(ch.Done, "k-"+id)
		}
		mustCommit(b, s, ch)
	}
	s.Close()
	fi, _ := os.Stat(path)
	b.ReportMetric(float64(fi.Size())/(1<<20), "MiB")
	for b.Loop() {
		s := open(b, path, nil)
		s.Close()
	}
}

// FuzzOpenDamaged: whatever bytes of a store file are damaged, Open returns
// a store or an error, never a panic or a fault.
func FuzzOpenDamaged(f *testing.F) {
	f.Add(uint32(2*pageSize), []byte{0xff})
	f.Add(uint32(3*pageSize+16), []byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint32(pageSize+8), []byte{0x10, 0x00})
	template, err := os.ReadFile(filled(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, at uint32, damage []byte) {
		b := bytes.Clone(template)
		for i, d := range damage {
			b[(int(at)+i)%len(b)] ^= d
		}
		path := filepath.Join(t.TempDir(), FileName)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Options{NoSync: true})
		if err == nil {
			s.Close()
		}
	})
}
