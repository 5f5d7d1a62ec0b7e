package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRotationWatch: the size follows the newest rotation; a size below
// the largest token request event is warned of, a safe one noted, each
// change once.
func TestRotationWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	var logs bytes.Buffer
	w := newRotationWatch(path, slog.New(slog.NewTextHandler(&logs, nil)))
	put := func(name string, size int) {
		t.Helper()
		data := strings.Repeat("x", size-1) + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name   string
		backup string // a backup written before the check, with a live file of 500 bytes
		size   int    // the backup's size
		want   int64
		logged string // substring of the new log line, "" for none
	}{
		{"never rotated", "", 0, 0, ""},
		{"rotated at 1 MiB", "audit-2026-12-08T01-00-00.000.log", 1<<20 - 100, 1 << 20, "level=WARN msg=\"the audit log rotates below"},
		{"the same rotation again", "", 0, 1 << 20, ""},
		{"rotated at 100 MiB", "audit-2026-12-08T02-00-00.000.log", 100<<20 - 10, 100 << 20, "level=INFO msg=\"audit log rotation size inferred\""},
	}
	put("audit.log", 500)
	for _, s := range steps {
		if s.backup != "" {
			put(s.backup, s.size)
		}
		before := logs.Len()
		if got := w.check(); got != s.want {
			t.Errorf("%s: check() = %d, want %d", s.name, got, s.want)
		}
		line := logs.String()[before:]
		if s.logged == "" && line != "" || !strings.Contains(line, s.logged) || strings.Count(line, "\n") > 1 {
			t.Errorf("%s: logged %q, want one line with %q", s.name, line, s.logged)
		}
	}
	var none *rotationWatch // --once
	if got := none.check(); got != 0 {
		t.Errorf("nil watch: %d", got)
	}
}
