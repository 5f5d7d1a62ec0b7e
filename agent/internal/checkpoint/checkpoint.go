// Package checkpoint keeps the agent's acknowledged position in the audit
// log durably: a versioned JSON file replaced atomically (write a temporary
// file, fsync it, rename it over the old one, fsync the folder), so a crash
// at any moment leaves either the old or the new checkpoint, never a mix.
package checkpoint

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokenwatch/tokenwatch/internal/follow"
)

// FileName is the checkpoint's name in its folder.
const FileName = "checkpoint.json"

// MarkerName is a file written with the first checkpoint and never
// removed: while it is there, a missing checkpoint was lost (deleted), not
// never written, and Load says so with ErrMissing.
const MarkerName = "checkpoint.kept"

// ErrMissing is returned by Load when the folder kept a checkpoint before
// (MarkerName is there) and the checkpoint is gone.
var ErrMissing = errors.New("checkpoint missing")

// ErrBadStarts is returned by LoadStarts, with the position, when the
// checkpoint's starts cannot be read: they only spare counting a
// long-running request twice, so the position is still good to resume at.
var ErrBadStarts = errors.New("open_starts unreadable, ignored")

// version is the format written; Load refuses others.
const version = 1

// Store reads and writes the checkpoint in one folder. A Store is not safe
// for concurrent Saves.
type Store struct {
	dir, path string
	marked    bool // MarkerName exists
}

// file is the on-disk format.
type file struct {
	Version int    `json:"version"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	FP      string `json:"fingerprint"` // hex SHA-256 of the first FPLen bytes
	FPLen   int    `json:"fingerprint_len"`
	Name    string `json:"name"`
	Offset  int64  `json:"offset"`
	// Starts: optional, so an older agent reading it ignores it.
	Starts *startsFile `json:"open_starts,omitempty"`
}

// startsFile is Starts on disk.
type startsFile struct {
	Key    string `json:"key"`    // hex
	Hashes string `json:"hashes"` // base64 of 8-byte big-endian hashes
}

// Starts are the long-running requests the agent counted at their start
// and whose end it had not read at the checkpoint's position: the keyed
// hashes of their auditIDs, and the key. Empty when there are none.
type Starts struct {
	Key    []byte
	Hashes []uint64
}

func (st Starts) file() *startsFile {
	if len(st.Hashes) == 0 {
		return nil
	}
	b := make([]byte, 0, 8*len(st.Hashes))
	for _, h := range st.Hashes {
		b = binary.BigEndian.AppendUint64(b, h)
	}
	return &startsFile{Key: hex.EncodeToString(st.Key), Hashes: base64.StdEncoding.EncodeToString(b)}
}

// starts reads f; a nil f is no starts. ok is false when f is corrupt.
func (f *startsFile) starts() (Starts, bool) {
	if f == nil {
		return Starts{}, true
	}
	key, err := hex.DecodeString(f.Key)
	if err != nil || len(key) == 0 {
		return Starts{}, false
	}
	b, err := base64.StdEncoding.DecodeString(f.Hashes)
	if err != nil || len(b)%8 != 0 {
		return Starts{}, false
	}
	st := Starts{Key: key, Hashes: make([]uint64, 0, len(b)/8)}
	for ; len(b) > 0; b = b[8:] {
		st.Hashes = append(st.Hashes, binary.BigEndian.Uint64(b))
	}
	return st, true
}

// Open makes dir if needed and removes temporary files a crash left behind.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open checkpoint dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint dir: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), FileName+".tmp") {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	s := &Store{dir: dir, path: filepath.Join(dir, FileName)}
	if _, err := os.Stat(filepath.Join(dir, MarkerName)); err == nil {
		s.marked = true
	}
	return s, nil
}

// Path returns the checkpoint file's path.
func (s *Store) Path() string { return s.path }

// Load returns the saved position, or nil and no error when there is none.
// It is LoadStarts without the starts.
func (s *Store) Load() (*follow.Position, error) {
	p, _, err := s.LoadStarts()
	if errors.Is(err, ErrBadStarts) {
		err = nil
	}
	return p, err
}

// LoadStarts returns the saved position and starts, or nil and no error when there is none.
// When there is none but the folder kept one before, it returns nil and an
// error wrapping ErrMissing. A file that cannot be understood is an error
// naming it.
func (s *Store) LoadStarts() (*follow.Position, Starts, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		if s.marked {
			return nil, Starts{}, fmt.Errorf("read checkpoint %s: %w (%s says one was kept here before)", s.path, ErrMissing, MarkerName)
		}
		return nil, Starts{}, nil
	}
	if err != nil {
		return nil, Starts{}, fmt.Errorf("read checkpoint: %w", err)
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, Starts{}, fmt.Errorf("read checkpoint %s: corrupt (remove it to start over at --start-at): %w", s.path, err)
	}
	if f.Version != version {
		return nil, Starts{}, fmt.Errorf("read checkpoint %s: version %d, want %d", s.path, f.Version, version)
	}
	fp, err := hex.DecodeString(f.FP)
	if err != nil || len(fp) != len(f.FP)/2 || f.FPLen < 0 || f.Offset < 0 || (f.FPLen > 0) != (len(fp) > 0) {
		return nil, Starts{}, fmt.Errorf("read checkpoint %s: corrupt (remove it to start over at --start-at): bad fingerprint or offset", s.path)
	}
	if len(fp) == 0 {
		fp = nil
	}
	pos := &follow.Position{
		ID:     follow.Identity{Dev: f.Dev, Ino: f.Ino, FP: fp, FPLen: f.FPLen},
		Name:   f.Name,
		Offset: f.Offset,
	}
	st, ok := f.Starts.starts()
	if !ok {
		return pos, Starts{}, fmt.Errorf("read checkpoint %s: %w", s.path, ErrBadStarts)
	}
	return pos, st, nil
}

// Save replaces the checkpoint with p durably, without starts.
func (s *Store) Save(p follow.Position) error { return s.SaveStarts(p, Starts{}) }

// SaveStarts replaces the checkpoint with p and st durably.
func (s *Store) SaveStarts(p follow.Position, st Starts) error {
	data, err := json.Marshal(file{
		Version: version, Dev: p.ID.Dev, Ino: p.ID.Ino, FP: hex.EncodeToString(p.ID.FP), FPLen: p.ID.FPLen,
		Name: p.Name, Offset: p.Offset, Starts: st.file(),
	})
	if err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	tmp, err := os.CreateTemp(s.dir, FileName+".tmp*")
	if err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := s.mark(); err != nil {
		return fmt.Errorf("write checkpoint marker: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync checkpoint: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close checkpoint: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("replace checkpoint: %w", err)
	}
	ok = true
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("sync checkpoint dir %s: %w", s.dir, err)
	}
	return nil
}

// mark writes MarkerName once; the folder's fsync after the checkpoint's
// rename makes both durable.
func (s *Store) mark() error {
	if s.marked {
		return nil
	}
	p := filepath.Join(s.dir, MarkerName)
	const text = "tokenwatch agent: a checkpoint was kept in this folder; if checkpoint.json goes missing, the agent reports what it skips as lost.\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		return err
	}
	s.marked = true
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
