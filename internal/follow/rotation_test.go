package follow

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

func TestRotationBound(t *testing.T) {
	for _, c := range []struct {
		name       string
		size, line int64
		want       int64
	}{
		{"a small line crosses 1 MiB", mib - 300, 500, mib},
		{"the backup is exactly full", mib, 1, mib},
		{"a large line crosses 3 MiB", 3*mib - 10, 2000, 3 * mib},
		{"a line spans two boundaries: the larger", mib / 2, 2 * mib, 2 * mib},
		{"no boundary between: not lumberjack", mib + 10, 100, 0},
		{"below the first MiB: not lumberjack", 1000, 1000, 0},
		{"empty backup", 0, 100, 0},
		{"no line", mib - 1, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := RotationBound(c.size, c.line); got != c.want {
				t.Errorf("RotationBound(%d, %d) = %d, want %d", c.size, c.line, got, c.want)
			}
		})
	}
}

// writeLumberjack writes lines of random sizes (up to maxLine bytes)
// through lumberjack at maxMB until it has rotated at least twice.
func writeLumberjack(t *testing.T, path string, maxMB int, compress bool, maxLine int) {
	t.Helper()
	lj := &lumberjack.Logger{Filename: path, MaxSize: maxMB, Compress: compress}
	rng := rand.New(rand.NewPCG(uint64(maxMB), 1))
	var cur, written int64
	for rotations := 0; rotations < 2; {
		l := strings.Repeat("x", 50+rng.IntN(maxLine-50)) + "\n"
		if cur+int64(len(l)) > int64(maxMB)*mib {
			time.Sleep(2 * time.Millisecond) // backups are named by the millisecond
			cur = 0
			rotations++
		}
		if _, err := lj.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
		cur += int64(len(l))
		written += int64(len(l))
	}
	if err := lj.Close(); err != nil {
		t.Fatal(err)
	}
	if compress {
		waitCompressed(t, path)
	}
}

// TestRotationProbeLumberjack: the size a real lumberjack writer rotates
// at is read back from its backups, plain or compressed.
func TestRotationProbeLumberjack(t *testing.T) {
	for _, c := range []struct {
		maxMB    int
		compress bool
		maxLine  int
	}{{1, false, 4000}, {1, true, 4000}, {3, false, 60000}, {2, true, 300000}} {
		t.Run(filepath.Join(strings.Repeat("M", c.maxMB), map[bool]string{true: "gz", false: "plain"}[c.compress]), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			writeLumberjack(t, path, c.maxMB, c.compress, c.maxLine)
			p := NewRotationProbe(path, DefaultMaxLine)
			got, err := p.Size()
			if err != nil || got != int64(c.maxMB)*mib {
				t.Fatalf("Size() = %d, %v; want %d", got, err, int64(c.maxMB)*mib)
			}
			if got, err := p.Size(); err != nil || got != int64(c.maxMB)*mib {
				t.Fatalf("second Size() = %d, %v; want the same", got, err)
			}
		})
	}
}

// TestRotationProbeUnknown: logs that show no lumberjack rotation give 0.
func TestRotationProbeUnknown(t *testing.T) {
	write := func(t *testing.T, dir string, files map[string]string) string {
		t.Helper()
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return filepath.Join(dir, "audit.log")
	}
	full := strings.Repeat("x", mib-100) + "\n"
	for _, c := range []struct {
		name  string
		files map[string]string
	}{
		{"never rotated", map[string]string{"audit.log": "{}\n"}},
		{"no live file", map[string]string{"audit-2026-12-08T01-00-00.000.log": full}},
		{"logrotate names", map[string]string{"audit.log.1": full, "audit.log": strings.Repeat("y", 200) + "\n"}},
		{"sizes that fit no MiB", map[string]string{"audit-2026-12-08T01-00-00.000.log": "{}\n", "audit.log": "{}\n"}},
		{"first line being written", map[string]string{"audit-2026-12-08T01-00-00.000.log": full, "audit.log": strings.Repeat("y", 200)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := NewRotationProbe(write(t, t.TempDir(), c.files), DefaultMaxLine).Size()
			if err != nil || got != 0 {
				t.Errorf("Size() = %d, %v; want 0", got, err)
			}
		})
	}
}

// TestRotationProbeNewest: the newest backup decides, with the file after
// it; a first line not yet complete keeps the last size.
func TestRotationProbeNewest(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	put := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	put("audit-2026-12-08T01-00-00.000.log", strings.Repeat("a", mib))
	put("audit-2026-12-08T02-00-00.000.log", "{}\n"+strings.Repeat("b", 3*mib-300)+"\n")
	put("audit.log", strings.Repeat("c", 400)+"\n")
	p := NewRotationProbe(path, DefaultMaxLine)
	if got, err := p.Size(); err != nil || got != 3*mib {
		t.Fatalf("Size() = %d, %v; want 3 MiB from the newest backup", got, err)
	}
	put("audit-2026-12-08T03-00-00.000.log", strings.Repeat("c", 400)+"\n"+strings.Repeat("d", mib-500)+"\n")
	put("audit.log", strings.Repeat("e", 300)) // the first line is being written
	if got, err := p.Size(); err != nil || got != 3*mib {
		t.Fatalf("Size() with the first line incomplete = %d, %v; want the last, 3 MiB", got, err)
	}
	put("audit.log", strings.Repeat("e", 300)+"\n")
	if got, err := p.Size(); err != nil || got != mib {
		t.Fatalf("Size() = %d, %v; want 1 MiB once the line is complete", got, err)
	}
	short := NewRotationProbe(path, 100) // reads at most 100 bytes of a line
	if got, err := short.Size(); err != nil || got != 0 {
		t.Fatalf("Size() with a first line longer than the probe reads = %d, %v; want 0", got, err)
	}
}
