package hostile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// stateFile is the aggregator's store file in its --state-dir.
const stateFile = "aggregator.db"

// bbolt's layout as far as the corruptions below need it: the two meta
// pages come first, one page each; a meta page's checksum sits after the
// page header (16 bytes) and the meta fields before it (56 bytes).
const metaChecksumAt = 16 + 56

// writtenState starts the aggregator on a new state directory, stops it,
// and returns the directory with the store file it wrote.
func writtenState(t *testing.T, bins *harness.Binaries, logDir string) *harness.Aggregator {
	t.Helper()
	a := harness.NewAggregator(t, bins, logDir, "")
	a.Start(t)
	if err := a.Proc.Stop(15 * time.Second); err != nil {
		t.Fatalf("aggregator graceful stop: %v", err)
	}
	return a
}

// TestCorruptStateStopsWithOneLine: a damaged state file stops the
// aggregator at start with exit 2 and one stderr line that names the file,
// says it is corrupt and what the recovery flag would discard; never a Go
// panic or a fault (a crash loop), never a silent empty start.
func TestCorruptStateStopsWithOneLine(t *testing.T) {
	bins := suite.Need(t)
	page := os.Getpagesize()
	tests := []struct {
		name    string
		corrupt func(b []byte) []byte
	}{
		{"zero bytes", func([]byte) []byte { return nil }},
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }},
		{"garbage pages", func(b []byte) []byte {
			for i := 2 * page; i < len(b); i++ {
				b[i] = byte(i*7 + 3)
			}
			return b
		}},
		{"both meta checksums flipped", func(b []byte) []byte {
			b[metaChecksumAt] ^= 0xff
			b[page+metaChecksumAt] ^= 0xff
			return b
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logDir := harness.LogDir(t)
			a := writtenState(t, bins, logDir)
			path := filepath.Join(a.StateDir, stateFile)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tt.corrupt(b), 0o600); err != nil {
				t.Fatal(err)
			}
			p := harness.Start(t, logDir, "aggregator", bins.Aggregator, a.Args()...)
			if err := p.Wait(30 * time.Second); err == nil {
				t.Fatal("aggregator started on a corrupt state file")
			} else if !p.Exited() {
				t.Fatalf("aggregator: %v", err)
			}
			_, stderr := p.Output()
			lines := strings.Split(strings.TrimRight(string(stderr), "\n"), "\n")
			if code := p.ExitCode(); code != 2 {
				t.Errorf("exit code = %d, want 2", code)
			}
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), stderr)
			}
			for _, want := range []string{path, "corrupt", "--state-reset-corrupt", "not yet exported", "dedupe record"} {
				if !strings.Contains(lines[0], want) {
					t.Errorf("stderr %q does not say %q", lines[0], want)
				}
			}
			for _, bad := range []string{"panic", "goroutine ", "SIGBUS", "SIGSEGV"} {
				if bytes.Contains(stderr, []byte(bad)) {
					t.Errorf("stderr holds %q: a crash, not a refusal", bad)
				}
			}
		})
	}
}

// TestStateResetCorruptStartsEmpty: with --state-reset-corrupt the corrupt
// file is kept aside under a timestamped name, the start is logged as an
// error saying what was discarded, and the aggregator serves.
func TestStateResetCorruptStartsEmpty(t *testing.T) {
	bins := suite.Need(t)
	logDir := harness.LogDir(t)
	a := writtenState(t, bins, logDir)
	path := filepath.Join(a.StateDir, stateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	a.Extra = append(a.Extra, "--state-reset-corrupt")
	a.Start(t)
	if err := a.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator graceful stop: %v", err)
	}
	_, stderr := a.Proc.Output()
	if !bytes.Contains(stderr, []byte(`"level":"ERROR"`)) || !bytes.Contains(stderr, []byte("DISCARDED")) {
		t.Errorf("stderr does not log the reset as an error saying what was discarded:\n%s", stderr)
	}
	moved, _ := filepath.Glob(path + ".corrupt-*")
	if len(moved) != 1 {
		t.Fatalf("files moved aside: %v, want one", moved)
	}
	if got, err := os.ReadFile(moved[0]); err != nil || len(got) != len(b)/2 {
		t.Errorf("moved file holds %d bytes (%v), want the corrupt file's %d", len(got), err, len(b)/2)
	}
	// The new store is sound: a plain start (no flag) takes it.
	a.Extra = nil
	a.Start(t)
}
