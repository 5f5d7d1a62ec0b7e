package follow

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// identityOf returns the identity the follower gives the plain file at path.
func identityOf(t *testing.T, path string) Identity {
	t.Helper()
	s, err := openPlain(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	return s.id
}

func TestResume(t *testing.T) {
	const size = 150
	a := lines("a", 0, 10, size)
	b := lines("b", 0, 4, size)
	c := lines("c", 0, 3, size)
	at := int64(len(strings.Join(a[:6], ""))) // checkpointed after a[5]
	tests := []struct {
		name string
		// setup lays out the folder and returns the checkpoint.
		setup      func(t *testing.T, dir string) Position
		want       []string
		wantLosses []Loss
	}{
		{
			name: "in the live file",
			setup: func(t *testing.T, dir string) Position {
				appendFile(t, filepath.Join(dir, "audit-2026-11-26T00-00-00.000.log"), b...) // history
				live := filepath.Join(dir, "audit.log")
				appendFile(t, live, a...)
				return Position{ID: identityOf(t, live), Name: live, Offset: at}
			},
			want: a[6:],
		},
		{
			name: "in a rotated then gzipped file",
			setup: func(t *testing.T, dir string) Position {
				live := filepath.Join(dir, "audit.log")
				appendFile(t, live, a...)
				p := Position{ID: identityOf(t, live), Name: live, Offset: at}
				ra := filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log")
				mustRename(t, live, ra)
				gzipFile(t, ra)
				appendFile(t, live, b...)
				rb := filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log")
				mustRename(t, live, rb)
				gzipFile(t, rb)
				appendFile(t, live, c...)
				return p
			},
			want: append(append(append([]string(nil), a[6:]...), b...), c...),
		},
		{
			name: "in a rotated plain file, with numbered logrotate names",
			setup: func(t *testing.T, dir string) Position {
				live := filepath.Join(dir, "audit.log")
				appendFile(t, live, b...)
				older := filepath.Join(dir, "audit.log.2")
				mustRename(t, live, older)
				setMtime(t, older, 1)
				appendFile(t, live, a...)
				p := Position{ID: identityOf(t, live), Name: live, Offset: at}
				mustRename(t, live, filepath.Join(dir, "audit.log.1"))
				setMtime(t, filepath.Join(dir, "audit.log.1"), 2)
				appendFile(t, live, c...)
				return p
			},
			want: append(append([]string(nil), a[6:]...), c...),
		},
		{
			name: "checkpointed file gone",
			setup: func(t *testing.T, dir string) Position {
				live := filepath.Join(dir, "audit.log")
				appendFile(t, live, a...)
				p := Position{ID: identityOf(t, live), Name: filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log"), Offset: at}
				os.Remove(live)
				appendFile(t, filepath.Join(dir, "audit-2026-11-27T00-00-00.000.log"), lines("old", 0, 2, size)...)
				appendFile(t, filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log"), b...)
				appendFile(t, live, c...)
				return p
			},
			want: append(append([]string(nil), b...), c...),
			wantLosses: []Loss{{Reason: ReasonRotatedFileGone, Offset: at,
				File: "audit-2026-11-27T00-00-01.000.log"}},
		},
		{
			name: "inode of the checkpointed file reused by the live file",
			setup: func(t *testing.T, dir string) Position {
				live := filepath.Join(dir, "audit.log")
				appendFile(t, live, c...)
				id := identityOf(t, live)
				id.FP = sha([]byte("other data")) // same inode, other content
				appendFile(t, filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log"), b...)
				return Position{ID: id, Name: live, Offset: at}
			},
			want:       append(append([]string(nil), b...), c...),
			wantLosses: []Loss{{Reason: ReasonRotatedFileGone, Offset: at, File: "audit.log"}},
		},
		{
			name: "live file truncated in place, copy kept",
			setup: func(t *testing.T, dir string) Position {
				live := filepath.Join(dir, "audit.log")
				appendFile(t, live, a...)
				p := Position{ID: identityOf(t, live), Name: live, Offset: at}
				data, _ := os.ReadFile(live)
				os.WriteFile(live+".1", data, 0o600)
				os.Truncate(live, 0)
				appendFile(t, live, c...)
				return p
			},
			want: append(append([]string(nil), a[6:]...), c...),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := tt.setup(t, dir)
			rec := newRecorder()
			runFollower(t, Config{Path: filepath.Join(dir, "audit.log"), Resume: &p}, rec)
			rec.waitFor(t, "all lines", func(l []line, _ []Loss) bool { return len(l) >= len(tt.want) })
			got, losses := rec.snapshot()
			if diff := cmp.Diff(tt.want, texts(got)); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
			for i := range losses {
				losses[i].File = filepath.Base(losses[i].File)
			}
			if diff := cmp.Diff(tt.wantLosses, losses, cmpIgnoreDetail); diff != "" {
				t.Errorf("losses (-want +got):\n%s", diff)
			}
			checkOffsets(t, dir, got)
		})
	}
}

func setMtime(t *testing.T, path string, hour int) {
	t.Helper()
	tm := timeAt(hour)
	if err := os.Chtimes(path, tm, tm); err != nil {
		t.Fatal(err)
	}
}

func TestRotatedFileGoneBeforeRead(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	a := lines("a", 0, 40, 200)
	appendFile(t, live, a...)
	p := Position{ID: identityOf(t, live), Name: live, Offset: 0}
	ra := filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log")
	mustRename(t, live, ra)
	b := lines("b", 0, 5, 200)
	rb := filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log")
	appendFile(t, rb, b...)
	c := lines("c", 0, 3, 200)
	appendFile(t, live, c...)

	rec := newRecorder()
	// Behind in the first file, the second is deleted before it is read.
	rec.onBlock = func(n int) {
		if n == 1 {
			if err := os.Remove(rb); err != nil {
				t.Error(err)
			}
		}
	}
	runFollower(t, Config{Path: live, Resume: &p, BlockSize: 1024}, rec)
	want := append(append([]string(nil), a...), c...)
	rec.waitLines(t, len(want))
	got, losses := rec.snapshot()
	if diff := cmp.Diff(want, texts(got)); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	wantLosses := []Loss{{Reason: ReasonRotatedFileGone, File: rb, Bytes: int64(len(strings.Join(b, ""))), BytesKnown: true}}
	if diff := cmp.Diff(wantLosses, losses, cmpIgnoreDetail); diff != "" {
		t.Errorf("losses (-want +got):\n%s", diff)
	}
}

// TestLiveFileGoneUnlisted: while the follower is behind, the live file it
// has seen is rotated away and its backup deleted (or compressed) before
// the follower lists the folder again. The backup is never listed; the
// follower knows the file from the live name and reports it, with the size
// it saw as a lower bound.
func TestLiveFileGoneUnlisted(t *testing.T) {
	tests := []struct {
		name       string
		backup     func(t *testing.T, path string)
		wantX      bool
		wantLosses func(live string, x []string) []Loss
	}{{
		name: "deleted",
		backup: func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
		wantLosses: func(live string, x []string) []Loss {
			return []Loss{{Reason: ReasonRotatedFileGone, File: live, Bytes: int64(len(strings.Join(x, "")))}}
		},
	}, {
		name:       "compressed",
		backup:     gzipFile,
		wantX:      true,
		wantLosses: func(string, []string) []Loss { return nil },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			a := lines("a", 0, 40, 200)
			appendFile(t, live, a...)
			p := Position{ID: identityOf(t, live), Name: live, Offset: 0}
			mustRename(t, live, filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log"))
			x := lines("x", 0, 5, 200)
			appendFile(t, live, x...) // seen at the live name at the start
			c := lines("c", 0, 3, 200)

			rec := newRecorder()
			rec.onBlock = func(n int) {
				if n != 1 {
					return
				}
				// Between two listings: rotated, and the backup gone or
				// compressed before the follower looks again.
				rx := filepath.Join(dir, "audit-2026-11-27T00-00-02.000.log")
				if err := os.Rename(live, rx); err != nil {
					t.Error(err)
				}
				appendFile(t, live, c...)
				tt.backup(t, rx)
			}
			runFollower(t, Config{Path: live, Resume: &p, BlockSize: 1024}, rec)
			want := append([]string(nil), a...)
			if tt.wantX {
				want = append(want, x...)
			}
			want = append(want, c...)
			rec.waitLines(t, len(want))
			got, losses := rec.snapshot()
			if diff := cmp.Diff(want, texts(got)); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantLosses(live, x), losses, cmpIgnoreDetail); diff != "" {
				t.Errorf("losses (-want +got):\n%s", diff)
			}
			checkOffsets(t, dir, got)
		})
	}
}

// TestLiveCopyTruncated: a copytruncate rotation of the file the follower
// has seen at the live name, at any point of candidates' steps (open the
// live file, look at it, list the folder, report), loses nothing: the copy
// holds all the data. Looking after the listing, as the follower once did,
// made a rotation between the two look like a deleted file.
func TestLiveCopyTruncated(t *testing.T) {
	for _, at := range []string{"after open", "after look", "after listing"} {
		t.Run(at, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			appendFile(t, live, lines("a", 0, 10, 200)...)
			f, err := New(Config{Path: live})
			if err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			ctx := context.Background()
			pass := 0
			rotate := func(step string) {
				if pass != 2 || step != at {
					return
				}
				data, err := os.ReadFile(live)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "audit-2026-11-27T00-00-01.000.log"), data, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(live, 0); err != nil {
					t.Fatal(err)
				}
				appendFile(t, live, lines("b", 0, 10, 200)...)
			}
			// candidates' steps, twice: the first time sees the live file.
			for pass = 1; pass <= 2; pass++ {
				src, err := openPlain(live, 0)
				if err != nil {
					t.Fatal(err)
				}
				rotate("after open")
				gone := f.notAtLive(src)
				if pass == 2 && at == "after open" && len(gone) != 1 {
					t.Fatalf("notAtLive after the rotation = %+v, want the file seen first", gone)
				}
				rotate("after look")
				sibs, err := f.lay.scan()
				if err != nil {
					t.Fatal(err)
				}
				rotate("after listing")
				if err := f.watchLive(ctx, rec, src, gone, sibs); err != nil {
					t.Fatal(err)
				}
				src.close()
			}
			if _, losses := rec.snapshot(); len(losses) != 0 {
				t.Errorf("losses = %+v, want none: the copy holds the data", losses)
			}
		})
	}
}
