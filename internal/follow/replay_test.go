package follow

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// touch writes lines to dir/name and sets its modification time.
func touch(t *testing.T, dir, name string, mtime time.Time, ls ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	appendFile(t, p, ls...)
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReplayFilesOrder(t *testing.T) {
	// Modification times lie (copied files): the names decide where they can.
	tests := []struct {
		name  string
		files map[string]int // name -> hour of its modification time
		gz    []string       // compressed after writing
		args  func(dir string) []string
		want  []string
	}{
		{
			name: "lumberjack: by the time in the name, live last",
			files: map[string]int{
				"audit-2026-11-26T10-00-00.000.log": 23, "audit-2026-11-26T11-00-00.000.log": 1, "audit.log": 0,
			},
			gz:   []string{"audit-2026-11-26T10-00-00.000.log"},
			args: func(dir string) []string { return []string{dir} },
			want: []string{"audit-2026-11-26T10-00-00.000.log.gz", "audit-2026-11-26T11-00-00.000.log", "audit.log"},
		},
		{
			name:  "logrotate: by modification time, live last",
			files: map[string]int{"audit.log.2": 3, "audit.log.1": 4, "audit.log": 2},
			gz:    []string{"audit.log.2"},
			args:  func(dir string) []string { return []string{dir} },
			want:  []string{"audit.log.2.gz", "audit.log.1", "audit.log"},
		},
		{
			name:  "other siblings by modification time",
			files: map[string]int{"audit.log-20261126": 5, "audit.log-old": 4, "audit.log": 1},
			args:  func(dir string) []string { return []string{dir} },
			want:  []string{"audit.log-old", "audit.log-20261126", "audit.log"},
		},
		{
			name: "backups without the live file, named in any order and twice",
			files: map[string]int{
				"audit-2026-11-26T10-00-00.000.log": 9, "audit-2026-11-26T09-00-00.000.log": 10,
			},
			args: func(dir string) []string {
				return []string{filepath.Join(dir, "audit-2026-11-26T10-00-00.000.log"), dir}
			},
			want: []string{"audit-2026-11-26T09-00-00.000.log", "audit-2026-11-26T10-00-00.000.log"},
		},
		{
			name:  "a compressed copy of a listed plain file is left out",
			files: map[string]int{"audit-2026-11-26T10-00-00.000.log": 1, "audit.log": 2, "copy": 3},
			args: func(dir string) []string {
				p := filepath.Join(dir, "audit-2026-11-26T10-00-00.000.log")
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "copy"), data, 0o600); err != nil {
					t.Fatal(err)
				}
				gzipFile(t, filepath.Join(dir, "copy"))
				if err := os.Rename(filepath.Join(dir, "copy.gz"), p+".gz"); err != nil {
					t.Fatal(err)
				}
				return []string{dir}
			},
			want: []string{"audit-2026-11-26T10-00-00.000.log", "audit.log"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, hour := range tt.files {
				touch(t, dir, name, timeAt(hour), seqLine(name, 0, 64))
			}
			for _, name := range tt.gz {
				gzipFile(t, filepath.Join(dir, name))
				mt := timeAt(tt.files[name])
				if err := os.Chtimes(filepath.Join(dir, name+".gz"), mt, mt); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReplayFiles(tt.args(dir))
			if err != nil {
				t.Fatal(err)
			}
			for i := range got {
				got[i] = filepath.Base(got[i])
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ReplayFiles = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReplayFilesErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReplayFiles([]string{dir}); err == nil {
		t.Error("ReplayFiles(empty directory) = nil error, want one")
	}
	if _, err := ReplayFiles([]string{filepath.Join(dir, "none.log")}); err == nil {
		t.Error("ReplayFiles(missing file) = nil error, want one")
	}
}

// TestReplayRun replays a rotated .gz, a plain rotated file and the live
// file: every line once, in log order.
func TestReplayRun(t *testing.T) {
	dir := t.TempDir()
	touch(t, dir, "audit-2026-11-26T10-00-00.000.log", timeAt(9), lines("a", 0, 300, 200)...)
	gzipFile(t, filepath.Join(dir, "audit-2026-11-26T10-00-00.000.log"))
	touch(t, dir, "audit-2026-11-26T11-00-00.000.log", timeAt(8), lines("b", 0, 300, 200)...)
	touch(t, dir, "audit.log", timeAt(7), lines("c", 0, 300, 200)...)
	files, err := ReplayFiles([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReplay(Config{StartAt: StartBeginning, BlockSize: 4096}, files)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	if err := r.Run(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	got, losses := rec.snapshot()
	want := append(append(lines("a", 0, 300, 200), lines("b", 0, 300, 200)...), lines("c", 0, 300, 200)...)
	if !slices.Equal(texts(got), want) {
		t.Errorf("replayed %d lines, want %d in log order (first %.40q)", len(got), len(want), texts(got)[:1])
	}
	if len(losses) != 0 {
		t.Errorf("losses = %+v, want none", losses)
	}
	st := r.Stats()
	if st.Lines != 900 || st.Rotations != 3 || st.File != filepath.Join(dir, "audit.log") {
		t.Errorf("Stats = lines %d, files %d, file %s; want 900, 3, the live file", st.Lines, st.Rotations, st.File)
	}
}
