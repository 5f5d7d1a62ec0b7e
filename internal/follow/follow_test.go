package follow

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRenameBetweenReads(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, lines("a", 0, 3, 100)...)
	rec := newRecorder()
	rec.gate = make(chan struct{})
	runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)

	rec.gate <- struct{}{} // the first block is in the handler: the follower is held
	// Written before the rotation, after the follower's last read.
	appendFile(t, live, lines("a", 3, 6, 100)...)
	if err := os.Rename(live, filepath.Join(dir, "audit-2026-11-27T00-00-00.000.log")); err != nil {
		t.Fatal(err)
	}
	appendFile(t, live, lines("b", 0, 3, 100)...)
	close(rec.gate)

	rec.waitLines(t, 9)
	got, losses := rec.snapshot()
	want := append(lines("a", 0, 6, 100), lines("b", 0, 3, 100)...)
	if diff := cmp.Diff(want, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if len(losses) != 0 {
		t.Errorf("losses = %+v, want none", losses)
	}
	checkOffsets(t, dir, got)
}

func TestSeveralRotationsWhileBehindAndGzipLater(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, lines("a", 0, 2, 200)...)
	rec := newRecorder()
	rec.gate = make(chan struct{})
	runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)

	rec.gate <- struct{}{}
	appendFile(t, live, lines("a", 2, 5, 200)...)
	a := filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log")
	b := filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log")
	c := filepath.Join(dir, "audit-2026-11-27T00-00-03.000.log")
	mustRename(t, live, a)
	appendFile(t, live, lines("b", 0, 4, 200)...)
	mustRename(t, live, b)
	appendFile(t, live, lines("c", 0, 4, 200)...)
	mustRename(t, live, c)
	appendFile(t, live, lines("d", 0, 2, 200)...)
	// Compressed later: the one being read, and one not opened yet.
	gzipFile(t, a)
	gzipFile(t, b)
	close(rec.gate)

	var want []string
	for _, p := range []struct {
		prefix string
		n      int
	}{{"a", 5}, {"b", 4}, {"c", 4}, {"d", 2}} {
		want = append(want, lines(p.prefix, 0, p.n, 200)...)
	}
	rec.waitLines(t, len(want))
	got, losses := rec.snapshot()
	if diff := cmp.Diff(want, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if len(losses) != 0 {
		t.Errorf("losses = %+v, want none", losses)
	}
	checkOffsets(t, dir, got)
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func TestCopyTruncate(t *testing.T) {
	tests := []struct {
		name    string
		after   []string // written to the live file after truncation
		gzipped bool     // the copy is compressed before the follower looks
	}{
		{name: "shorter after truncation", after: lines("b", 0, 1, 50)},
		{name: "rewritten beyond the old offset", after: lines("b", 0, 40, 300)},
		{name: "copy gzipped", after: lines("b", 0, 2, 50), gzipped: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			appendFile(t, live, lines("a", 0, 3, 300)...)
			rec := newRecorder()
			rec.gate = make(chan struct{})
			runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)

			rec.gate <- struct{}{}
			appendFile(t, live, lines("a", 3, 6, 300)...)
			data, err := os.ReadFile(live)
			if err != nil {
				t.Fatal(err)
			}
			cp := live + ".1"
			if err := os.WriteFile(cp, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(live, 0); err != nil {
				t.Fatal(err)
			}
			appendFile(t, live, tt.after...)
			if tt.gzipped {
				gzipFile(t, cp)
			}
			close(rec.gate)

			want := append(lines("a", 0, 6, 300), tt.after...)
			rec.waitLines(t, len(want))
			got, losses := rec.snapshot()
			if diff := cmp.Diff(want, texts(got)); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
			if len(losses) != 0 {
				t.Errorf("losses = %+v, want none", losses)
			}
			checkOffsets(t, dir, got)
		})
	}
}

func TestMissingAtStartDeletedAndRecreated(t *testing.T) {
	for _, startAt := range []string{StartEnd, StartBeginning} {
		t.Run(startAt, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			rec := newRecorder()
			runFollower(t, Config{Path: live, StartAt: startAt}, rec)

			appendFile(t, live, lines("a", 0, 3, 100)...) // appears after the start: read from 0
			rec.waitLines(t, 3)
			if err := os.Remove(live); err != nil {
				t.Fatal(err)
			}
			appendFile(t, live, lines("b", 0, 2, 100)...)
			rec.waitLines(t, 5)
			got, losses := rec.snapshot()
			want := append(lines("a", 0, 3, 100), lines("b", 0, 2, 100)...)
			if diff := cmp.Diff(want, texts(got)); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
			if len(losses) != 0 {
				t.Errorf("losses = %+v, want none", losses)
			}
		})
	}
}

// TestStartAtCheckpointLost: starting without a checkpoint that was kept
// before reports what StartAt skips, as a loss.
func TestStartAtCheckpointLost(t *testing.T) {
	tests := []struct {
		startAt string
		hist    bool
		bytes   int64
		detail  string
	}{
		{StartEnd, true, 240, "skipping 240 bytes of the live file and 2 rotated files"},
		{StartEnd, false, 240, "skipping 240 bytes of the live file;"},
		{StartBeginning, true, 0, "skipping 0 bytes of the live file and 2 rotated files"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/history=%v", tt.startAt, tt.hist), func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			if tt.hist {
				appendFile(t, filepath.Join(dir, "audit-2026-11-26T00-00-00.000.log"), lines("hist", 0, 3, 80)...)
				appendFile(t, filepath.Join(dir, "audit.log.1"), lines("hist1", 0, 3, 80)...)
			}
			appendFile(t, live, lines("old", 0, 3, 80)...)
			rec := newRecorder()
			runFollower(t, Config{Path: live, StartAt: tt.startAt, CheckpointLost: true}, rec)
			appendFile(t, live, lines("new", 0, 1, 80)...)
			rec.waitFor(t, "the new line", func(ls []line, _ []Loss) bool {
				return len(ls) > 0 && ls[len(ls)-1].text == lines("new", 0, 1, 80)[0]
			})
			_, losses := rec.snapshot()
			if len(losses) != 1 {
				t.Fatalf("losses = %+v, want one", losses)
			}
			l := losses[0]
			if l.Reason != ReasonCheckpointMissing || l.File != live || l.Bytes != tt.bytes || !l.BytesKnown || !strings.Contains(l.Detail, tt.detail) {
				t.Errorf("loss = %+v, want %s of %d bytes in %s, detail with %q", l, ReasonCheckpointMissing, tt.bytes, live, tt.detail)
			}
		})
	}
}

func TestStartAt(t *testing.T) {
	tests := []struct {
		name    string
		startAt string
		want    []string
	}{
		{name: "end skips the file and its history", startAt: StartEnd,
			want: append([]string{"torn-line-completed\n"}, lines("new", 0, 2, 80)...)},
		{name: "beginning reads the live file, not its history", startAt: StartBeginning,
			want: append(append(lines("old", 0, 3, 80), "torn-line-completed\n"), lines("new", 0, 2, 80)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			appendFile(t, filepath.Join(dir, "audit-2026-11-26T00-00-00.000.log"), lines("hist", 0, 3, 80)...)
			appendFile(t, filepath.Join(dir, "audit.log.1"), lines("hist1", 0, 3, 80)...)
			appendFile(t, live, lines("old", 0, 3, 80)...)
			appendFile(t, live, "torn-line") // torn: its start is part of the next line
			rec := newRecorder()
			runFollower(t, Config{Path: live, StartAt: tt.startAt}, rec)
			appendFile(t, live, "-completed\n")
			appendFile(t, live, lines("new", 0, 2, 80)...)
			rec.waitLines(t, len(tt.want))
			got, _ := rec.snapshot()
			if diff := cmp.Diff(tt.want, texts(got)); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
			checkOffsets(t, dir, got)
		})
	}
}

func TestTornLineWaitsForNewline(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, "first\n", "second-half")
	f, err := New(Config{Path: live})
	if err != nil {
		t.Fatal(err)
	}
	f.buf = make([]byte, f.cfg.BlockSize)
	src, err := openPlain(live, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer src.close()
	rec := newRecorder()
	ctx := context.Background()
	if err := f.drain(ctx, rec, src); err != nil {
		t.Fatal(err)
	}
	if got, _ := rec.snapshot(); !cmp.Equal(texts(got), []string{"first\n"}) {
		t.Fatalf("before the newline: %q, want only the first line", texts(got))
	}
	appendFile(t, live, "-done\n")
	if err := f.drain(ctx, rec, src); err != nil {
		t.Fatal(err)
	}
	got, _ := rec.snapshot()
	if diff := cmp.Diff([]string{"first\n", "second-half-done\n"}, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if got[1].pos.Offset != 6 {
		t.Errorf("offset of the completed line = %d, want 6", got[1].pos.Offset)
	}
}

func TestLongLines(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 32 MiB")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	maxLine := strings.Repeat("x", DefaultMaxLine) + "\n"
	tooLong := strings.Repeat("y", DefaultMaxLine+1) + "\n"
	appendFile(t, path, "a\n", maxLine, tooLong, "b\n", "unterminated")
	rec := newRecorder()
	f, err := New(Config{Path: path, Once: true, StartAt: StartBeginning})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	got, losses := rec.snapshot()
	if diff := cmp.Diff([]string{"a\n", maxLine, "b\n"}, texts(got)); diff != "" {
		t.Errorf("lines differ: %.200s", diff)
	}
	if off := got[2].pos.Offset; off != int64(2+len(maxLine)+len(tooLong)) {
		t.Errorf("offset after the skipped line = %d", off)
	}
	wantLosses := []Loss{
		{Reason: ReasonLineTooLong, File: path, Offset: int64(2 + len(maxLine)), Bytes: int64(len(tooLong)),
			Lines: 1, BytesKnown: true, LinesKnown: true},
		{Reason: ReasonIncompleteLine, File: path, Offset: int64(2 + len(maxLine) + len(tooLong) + 2), Bytes: 12,
			Lines: 1, BytesKnown: true, LinesKnown: true},
	}
	if diff := cmp.Diff(wantLosses, losses, cmpIgnoreDetail); diff != "" {
		t.Errorf("losses (-want +got):\n%s", diff)
	}
	if st, _ := waitStats(f, func(st Stats) bool { return st.Lines >= 3 && st.LinesTooLong >= 1 }); st.LinesTooLong != 1 || st.Lines != 3 {
		t.Errorf("Stats = %+v, want 1 line too long, 3 lines", st)
	}
	if len(f.buf) > DefaultMaxLine+1 {
		t.Errorf("buffer grew to %d bytes, beyond MaxLine+1", len(f.buf))
	}
}

var cmpIgnoreDetail = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Detail" }, cmp.Ignore())

// kube-apiserver keeps writing into a deleted audit.log through its open
// descriptor until it rotates; those lines are read too.
func TestDeletedFileStillWritten(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	w, err := os.OpenFile(live, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.WriteString(strings.Join(lines("a", 0, 2, 100), ""))
	rec := newRecorder()
	runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)
	rec.waitLines(t, 2)
	if err := os.Remove(live); err != nil {
		t.Fatal(err)
	}
	w.WriteString(strings.Join(lines("a", 2, 4, 100), ""))
	rec.waitLines(t, 4) // read from the deleted file while no successor exists
	w.WriteString(strings.Join(lines("a", 4, 6, 100), ""))
	appendFile(t, live, lines("b", 0, 2, 100)...)
	want := append(lines("a", 0, 6, 100), lines("b", 0, 2, 100)...)
	rec.waitLines(t, len(want))
	got, losses := rec.snapshot()
	if diff := cmp.Diff(want, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if len(losses) != 0 {
		t.Errorf("losses = %+v, want none", losses)
	}
}

// logrotate's create mode: the file is renamed and a new empty one made;
// the writer goes on in the renamed file until it reopens.
func TestRenamedFileWrittenUntilReopen(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	w, err := os.OpenFile(live, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.WriteString(strings.Join(lines("a", 0, 2, 100), ""))
	rec := newRecorder()
	// The grace for a renamed file whose successor stays empty must not
	// run out while the test writes.
	runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec, func(f *Follower) { f.rotateGrace = failAfter })
	rec.waitLines(t, 2)
	mustRename(t, live, live+".1")
	appendFile(t, live) // the new, empty live file
	w.WriteString(strings.Join(lines("a", 2, 4, 100), ""))
	rec.waitLines(t, 4)
	w.WriteString(strings.Join(lines("a", 4, 5, 100), "")) // last write before the reopen
	appendFile(t, live, lines("b", 0, 2, 100)...)          // the writer reopened
	want := append(lines("a", 0, 5, 100), lines("b", 0, 2, 100)...)
	rec.waitLines(t, len(want))
	got, losses := rec.snapshot()
	if diff := cmp.Diff(want, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if len(losses) != 0 {
		t.Errorf("losses = %+v, want none", losses)
	}
	checkOffsets(t, dir, got)
}

func TestFolderMissingAtStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	live := filepath.Join(dir, "audit.log")
	rec := newRecorder()
	runFollower(t, Config{Path: live}, rec)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	appendFile(t, live, lines("a", 0, 2, 100)...)
	rec.waitLines(t, 2)
	got, _ := rec.snapshot()
	if diff := cmp.Diff(lines("a", 0, 2, 100), texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}
