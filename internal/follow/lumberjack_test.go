package follow

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

// writeRotating writes n numbered lines of about size bytes through a
// lumberjack writer that rotates every MiB and compresses its backups, as
// kube-apiserver does with --audit-log-maxsize=1 --audit-log-compress.
func writeRotating(t testing.TB, path string, n, size int) {
	t.Helper()
	writeRotatingRate(t, path, n, size, 0)
}

// writeRotatingRate is writeRotating at about mbps MB/s (0: at full speed).
func writeRotatingRate(t testing.TB, path string, n, size int, mbps float64) {
	t.Helper()
	start := time.Now()
	lj := &lumberjack.Logger{Filename: path, MaxSize: 1, Compress: true}
	defer waitCompressed(t, path)
	defer lj.Close()
	const max = 1 << 20
	var cur int64
	for i := range n {
		l := seqLine("lj", i, size)
		if cur+int64(len(l)) > max {
			// lumberjack names backups by the millisecond and a second
			// rotation within one would overwrite the first backup: keep
			// rotations apart (the apiserver's are seconds apart).
			time.Sleep(2 * time.Millisecond)
			cur = 0
		}
		if _, err := lj.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
		cur += int64(len(l))
		if mbps > 0 && i%100 == 99 {
			due := start.Add(time.Duration(float64((i+1)*size) / (mbps * 1e6) * float64(time.Second)))
			time.Sleep(time.Until(due)) // pacing the writer, not synchronisation
		}
	}
}

func rotations(t testing.TB) int {
	if s := os.Getenv("TOKENWATCH_FOLLOW_ROTATIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if testing.Short() {
		return 5
	}
	return 50
}

func TestLumberjackRotation(t *testing.T) {
	for _, behind := range []bool{false, true} {
		t.Run(fmt.Sprintf("behind=%v", behind), func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "audit.log")
			const size = 1000
			n := rotations(t) * (1 << 20) / size
			rec := newRecorder()
			if behind {
				// Held inside the handler on its first block while every
				// rotation happens and the backups are compressed.
				rec.gate = make(chan struct{})
			}
			f, _ := runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)
			if behind {
				appendFile(t, live, seqLine("lj", 0, size))
				rec.gate <- struct{}{}
				writeRotatingFrom(t, live, 1, n, size)
				close(rec.gate)
			} else {
				writeRotating(t, live, n, size)
			}
			rec.waitLines(t, n)
			got, losses := rec.snapshot()
			if len(got) != n {
				t.Fatalf("got %d lines, want %d", len(got), n)
			}
			for i, l := range got {
				if want := seqLine("lj", i, size); l.text != want {
					t.Fatalf("line %d = %.40q, want %.40q", i, l.text, want)
				}
			}
			if len(losses) != 0 {
				t.Errorf("losses = %+v, want none", losses)
			}
			checkOffsets(t, dir, got)
			if st := f.Stats(); st.Rotations < int64(rotations(t)-1) || st.Lines != int64(n) {
				t.Errorf("Stats = %+v, want %d lines and about %d rotations", st, n, rotations(t))
			}
		})
	}
}

// writeRotatingFrom is writeRotating continuing an existing file at line from.
func writeRotatingFrom(t testing.TB, path string, from, n, size int) {
	t.Helper()
	lj := &lumberjack.Logger{Filename: path, MaxSize: 1, Compress: true}
	defer waitCompressed(t, path)
	defer lj.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	cur := fi.Size()
	for i := from; i < n; i++ {
		l := seqLine("lj", i, size)
		if cur+int64(len(l)) > 1<<20 {
			time.Sleep(2 * time.Millisecond)
			cur = 0
		}
		if _, err := lj.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
		cur += int64(len(l))
	}
}

// waitCompressed waits until lumberjack has compressed every backup of the
// live file path. Its Close does not wait for the compression goroutine,
// which goes on creating <backup>.gz and removing <backup> after the
// writer returns: a test ending then raced it (t.TempDir's cleanup failed
// with "directory not empty" when a .gz appeared during the removal). A
// backup is compressed before it is removed, so when no uncompressed
// backup is left, nothing more will be written.
func waitCompressed(t testing.TB, path string) {
	t.Helper()
	dir, base := filepath.Split(path)
	ext := filepath.Ext(base)
	stem := strings.TrimSuffix(base, ext) + "-"
	for deadline := time.Now().Add(failAfter); ; time.Sleep(5 * time.Millisecond) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		plain := ""
		for _, e := range entries {
			if n := e.Name(); strings.HasPrefix(n, stem) && strings.HasSuffix(n, ext) {
				plain = n
			}
		}
		if plain == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lumberjack has not compressed %s after %s", plain, failAfter)
		}
	}
}

// TestWriteRotatingSettles: the writer helpers return only once lumberjack
// has compressed every backup, so that nothing writes into a test's folder
// after its end.
func TestWriteRotatingSettles(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	writeRotating(t, live, 3*(1<<20)/1000, 1000)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var gz int
	for _, e := range entries {
		switch n := e.Name(); {
		case n == "audit.log":
		case strings.HasSuffix(n, ".log.gz"):
			gz++
		default:
			t.Errorf("%s still there when the writer returned", n)
		}
	}
	if gz < 2 {
		t.Errorf("%d compressed backups, want at least 2", gz)
	}
}
