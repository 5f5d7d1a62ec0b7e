package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tokenwatch/tokenwatch/agent/internal/follow"
)

// standIn is a minimal checkpoint store used until agent/internal/checkpoint
// lands: one JSON file, written atomically (temp file, fsync, rename, fsync
// of the directory).
type standIn struct{ path string }

func openStandIn(dir string) (*standIn, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open checkpoint dir %s: %w", dir, err)
	}
	return &standIn{path: filepath.Join(dir, "checkpoint.json")}, nil
}

func (s *standIn) Load() (*follow.Position, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %s: %w", s.path, err)
	}
	var p follow.Position
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("read checkpoint %s: %w", s.path, err)
	}
	return &p, nil
}

func (s *standIn) Save(p follow.Position) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
