package config

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestWatcherCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aggregator.yaml")
	writeFile(t, path, "silence:\n  after: 1m\n")
	cfg, data, err := LoadForWatch(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Silence.After != time.Minute {
		t.Fatalf("silence.after = %v, want 1m", cfg.Silence.After)
	}
	var got []Config
	w := NewWatcher(path, data, time.Hour, discard(), func(c Config) { got = append(got, c) })

	if w.Check() {
		t.Error("Check() on an unchanged file applied a config")
	}
	writeFile(t, path, "silence:\n  after: 2m\n")
	if !w.Check() {
		t.Fatal("Check() after a valid change = false, want true")
	}
	writeFile(t, path, "silence:\n  after: nope\n")
	if w.Check() {
		t.Error("Check() applied an invalid file")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if w.Check() {
		t.Error("Check() applied a missing file")
	}
	writeFile(t, path, "silence:\n  after: 3m\n")
	if !w.Check() {
		t.Fatal("Check() after a fix = false, want true")
	}
	if len(got) != 2 || got[0].Silence.After != 2*time.Minute || got[1].Silence.After != 3*time.Minute {
		t.Errorf("applied configs = %+v, want silence.after 2m then 3m", got)
	}
}

// TestWatcherConfigMapSwap reproduces how the kubelet updates a ConfigMap
// volume: the file is a symlink through ..data, which is swapped atomically.
func TestWatcherConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "aggregator.yaml"), content)
	}
	mkVersion("..v1", "correlation:\n  clusters: 3\n")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "aggregator.yaml")
	if err := os.Symlink("..data/aggregator.yaml", path); err != nil {
		t.Fatal(err)
	}
	_, data, err := LoadForWatch(path)
	if err != nil {
		t.Fatal(err)
	}

	applied := make(chan Config, 4)
	// A long poll: the change must be seen through fsnotify. Where fsnotify
	// is unavailable the poll still finds it, only later.
	w := NewWatcher(path, data, 30*time.Second, discard(), func(c Config) { applied <- c })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	// Swap in an invalid version first: it must be rejected.
	swap := func(version string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mkVersion("..v2", "correlation:\n  clusters: 0\n")
	swap("..v2")
	mkVersion("..v3", "correlation:\n  clusters: 5\n")
	swap("..v3")

	select {
	case c := <-applied:
		if c.Correlation.Clusters != 5 {
			t.Errorf("applied correlation.clusters = %d, want 5 (the invalid 0 must never apply)", c.Correlation.Clusters)
		}
	case <-time.After(time.Minute):
		t.Fatal("the swapped config was not applied")
	}
}
