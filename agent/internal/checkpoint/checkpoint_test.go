package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/follow"
)

func TestSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.Load(); p != nil || err != nil {
		t.Fatalf("Load on an empty dir = %v, %v; want nil, nil", p, err)
	}
	tests := []follow.Position{
		{ID: follow.Identity{Dev: 2049, Ino: 1234567, FP: []byte{1, 2, 3, 0xff}, FPLen: 1024}, Name: "/var/log/audit.log", Offset: 99},
		{ID: follow.Identity{FP: []byte("0123456789abcdef0123456789abcdef"), FPLen: 17}, Name: "/l/audit-2026-11-27T00-00-01.000.log.gz", Offset: 1 << 40},
		{ID: follow.Identity{Dev: 1, Ino: 2}, Name: "x", Offset: 0},
	}
	for _, want := range tests {
		if err := s.Save(want); err != nil {
			t.Fatal(err)
		}
		// A new Store on the same dir, as after a restart.
		s2, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s2.Load()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(&want, got); diff != "" {
			t.Errorf("Load after Save (-want +got):\n%s", diff)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 || entries[0].Name() != FileName || entries[1].Name() != MarkerName {
		t.Errorf("dir holds %v, want only %s and %s", entries, FileName, MarkerName)
	}
}

// TestStarts: the starts are saved with the position and read back; a
// checkpoint written without them (Save, or an older agent) has none, and
// Load, as an older agent reads, ignores them.
func TestStarts(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pos := follow.Position{ID: follow.Identity{Dev: 1, Ino: 2}, Name: "x", Offset: 7}
	want := Starts{Key: []byte("0123456789abcdef0123456789abcdef"), Hashes: []uint64{1, 1 << 63, 42}}
	if err := s.SaveStarts(pos, want); err != nil {
		t.Fatal(err)
	}
	p, got, err := s.LoadStarts()
	if err != nil || p == nil || p.Offset != 7 {
		t.Fatalf("LoadStarts = %v, %v; want offset 7", p, err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("starts (-want +got):\n%s", diff)
	}
	if p, err := s.Load(); err != nil || p == nil || p.Offset != 7 {
		t.Errorf("Load of a checkpoint with starts = %v, %v; want offset 7", p, err)
	}
	if err := s.Save(pos); err != nil {
		t.Fatal(err)
	}
	if _, got, err := s.LoadStarts(); err != nil || got.Key != nil || got.Hashes != nil {
		t.Errorf("LoadStarts after Save = %v, %v; want no starts", got, err)
	}
	if data, _ := os.ReadFile(s.Path()); strings.Contains(string(data), "open_starts") {
		t.Errorf("Save without starts wrote %s", data)
	}
}

// TestBadStarts: starts that cannot be read are ignored with
// ErrBadStarts; the position is still returned.
func TestBadStarts(t *testing.T) {
	for _, give := range []string{
		`{"key":"zz","hashes":"AAAAAAAAAAE="}`, // key not hex
		`{"key":"","hashes":"AAAAAAAAAAE="}`,   // no key
		`{"key":"01","hashes":"AAAAAAAAAA=="}`, // a torn hash
		`{"key":"01","hashes":"!"}`,            // not base64
	} {
		dir := t.TempDir()
		data := `{"version":1,"dev":1,"ino":2,"name":"x","offset":7,"open_starts":` + give + `}`
		if err := os.WriteFile(filepath.Join(dir, FileName), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		p, st, err := s.LoadStarts()
		if !errors.Is(err, ErrBadStarts) || p == nil || p.Offset != 7 || st.Hashes != nil {
			t.Errorf("LoadStarts with open_starts %s = %v, %v, %v; want offset 7, no starts and ErrBadStarts", give, p, st, err)
		}
		if p, err := s.Load(); err != nil || p == nil || p.Offset != 7 {
			t.Errorf("Load with open_starts %s = %v, %v; want offset 7", give, p, err)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name, give, want string
	}{
		{name: "not json", give: "{\"version\":1,", want: "corrupt"},
		{name: "empty", give: "", want: "corrupt"},
		{name: "other version", give: `{"version":2,"offset":1}`, want: "version 2, want 1"},
		{name: "bad fingerprint", give: `{"version":1,"fingerprint":"zz","fingerprint_len":1}`, want: "bad fingerprint"},
		{name: "negative offset", give: `{"version":1,"offset":-1}`, want: "bad fingerprint or offset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, FileName), []byte(tt.give), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			p, err := s.Load()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), FileName) {
				t.Errorf("Load(%q) = %v, %v; want an error naming the file and saying %q", tt.give, p, err, tt.want)
			}
		})
	}
}

// TestLoadMissing: a checkpoint deleted after the folder kept one is not
// taken for a first start.
func TestLoadMissing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(follow.Position{ID: follow.Identity{Dev: 1, Ino: 2}, Name: "x", Offset: 7}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s2.Load()
	if p != nil || !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), FileName) {
		t.Errorf("Load after the checkpoint was deleted = %v, %v; want nil and ErrMissing naming the file", p, err)
	}
	// Saving again writes a checkpoint that loads.
	if err := s2.Save(follow.Position{ID: follow.Identity{Dev: 1, Ino: 2}, Name: "x", Offset: 9}); err != nil {
		t.Fatal(err)
	}
	if p, err := s2.Load(); err != nil || p == nil || p.Offset != 9 {
		t.Errorf("Load after a new Save = %v, %v; want offset 9", p, err)
	}
}

func TestOpenRemovesStaleTemporaries(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, FileName+".tmp123")
	if err := os.WriteFile(stale, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary still there: %v", err)
	}
}

func TestOpenUnwritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Open(filepath.Join(file, "sub")); err == nil {
		t.Error("Open under a regular file succeeded")
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"version":1,"dev":1,"ino":2,"fingerprint":"0102","fingerprint_len":2,"name":"a","offset":3}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, FileName), data, 0o600)
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Load()
		if err != nil {
			return
		}
		if p == nil {
			t.Fatal("nil position without error for an existing file")
		}
		// What loads, saves and loads the same.
		if err := s.Save(*p); err != nil {
			t.Fatal(err)
		}
		q, err := s.Load()
		if err != nil || !cmp.Equal(p, q) {
			t.Fatalf("round trip: %v, %v; want %v", q, err, p)
		}
	})
}
