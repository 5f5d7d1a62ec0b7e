package config

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultPoll is how often a Watcher re-reads the file when no event came.
const DefaultPoll = 10 * time.Second

// Settle is how long the file's directory must be quiet after a change
// before the file is read again.
const Settle = 100 * time.Millisecond

// Watcher re-reads a configuration file when it changes and hands every new
// valid configuration to a callback. An invalid file is logged and ignored:
// the previous configuration stays in force.
type Watcher struct {
	path     string
	poll     time.Duration
	logger   *slog.Logger
	onChange func(Config)
	last     []byte
}

// NewWatcher returns a Watcher of path whose current contents are data (as
// loaded at start). onChange is called from Run's goroutine with each new
// valid configuration. poll <= 0 means DefaultPoll.
func NewWatcher(path string, data []byte, poll time.Duration, logger *slog.Logger, onChange func(Config)) *Watcher {
	if poll <= 0 {
		poll = DefaultPoll
	}
	return &Watcher{path: path, poll: poll, logger: logger, onChange: onChange, last: bytes.Clone(data)}
}

// LoadForWatch reads and parses the file at path, returning its raw bytes
// for NewWatcher as well.
func LoadForWatch(path string) (Config, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, nil, err // an *fs.PathError: it names the operation and the file
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, data, nil
}

// Run watches until ctx is done. It watches the file's directory, not the
// file, so that atomic replacement and ConfigMap symlink swaps are seen; if
// fsnotify is unavailable it relies on the poll alone.
func (w *Watcher) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var errs <-chan error
	fw, err := fsnotify.NewWatcher()
	if err == nil {
		defer fw.Close()
		if err = fw.Add(filepath.Dir(w.path)); err == nil {
			events, errs = fw.Events, fw.Errors
		}
	}
	if err != nil {
		w.logger.Warn("config watch: fsnotify unavailable, polling only", "path", w.path, "poll", w.poll.String(), "err", err)
	}
	// A change between the initial load and the watch being set up would
	// otherwise wait for the poll.
	w.Check()
	ticker := time.NewTicker(w.poll)
	defer ticker.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			w.Check()
		case <-settle.C:
			w.Check()
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Any event in the directory may be a swap of the file or of a
			// symlink on its path: re-read and compare contents once the
			// directory has been quiet for Settle, so that a file written
			// in place is not read half-written.
			settle.Reset(Settle)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			w.logger.Warn("config watch", "path", w.path, "err", err)
		}
	}
}

// Check re-reads the file once and applies it if its contents changed and it
// is valid. It reports whether a new configuration was applied.
func (w *Watcher) Check() bool {
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.logger.Error("config reload: keeping the previous configuration", "path", w.path, "err", err)
		return false
	}
	if bytes.Equal(data, w.last) {
		return false
	}
	w.last = data
	cfg, err := Parse(data)
	if err != nil {
		w.logger.Error("config reload: invalid file rejected, keeping the previous configuration", "path", w.path, "err", err)
		return false
	}
	w.onChange(cfg)
	w.logger.Info("config reloaded", "path", w.path)
	return true
}
