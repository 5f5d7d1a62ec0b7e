package scan_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/auditgen"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
)

// needle is the grep baseline's fixed string.
const needle = `"subresource":"token"`

// counter is the agent's read path without the network: every block the
// follower hands out goes through the pre-filter and decode.
type counter struct {
	f       prefilter.Filter
	ms      []prefilter.Match
	matches int
	lines   int64
}

func (c *counter) Block(_ context.Context, b follow.Block) error {
	c.ms, _ = c.f.Block(c.ms[:0], b.Data)
	c.matches += len(c.ms)
	return nil
}

func (c *counter) Loss(context.Context, follow.Loss) error { return nil }

// scan reads path to its end the way `agent --once` does and returns the
// number of token creates found.
func scan(tb testing.TB, path string) int {
	tb.Helper()
	fol, err := follow.New(follow.Config{Path: path, StartAt: follow.StartBeginning, Once: true})
	if err != nil {
		tb.Fatal(err)
	}
	var c counter
	if err := fol.Run(context.Background(), &c); err != nil {
		tb.Fatal(err)
	}
	return c.matches
}

// exact counts the token creates of the file by decoding every line.
func exact(tb testing.TB, data []byte) int {
	tb.Helper()
	n := 0
	for line := range bytes.Lines(data) {
		ev, err := audit.Decode(line)
		if err != nil {
			tb.Fatalf("decode: %v", err)
		}
		if ev.IsTokenCreate() {
			n++
		}
	}
	return n
}

// benchFile returns the benchmark's log: $TOKENWATCH_BENCH_LOG (bench/run.sh
// passes its cached realistic log), else a 64 MiB log generated alike.
func benchFile(b *testing.B) string {
	if p := os.Getenv("TOKENWATCH_BENCH_LOG"); p != "" {
		return p
	}
	path := filepath.Join(b.TempDir(), "audit.log")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	cfg := auditgen.Config{Seed: 1, Lines: 64 << 20 / 1100, TokenRate: 0.005, Step: time.Millisecond, Attacks: true, Pad: 1100}
	if _, _, err := auditgen.Generate(f, cfg); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkScan compares, on the same warm file, the agent's read +
// pre-filter + decode path (follow, prefilter.Filter.Block) with
// `LC_ALL=C grep -cF '"subresource":"token"'` (grep is not exact; the agent
// is: its token-creates/op is the exact count) and with a plain read of the
// file in 1 MiB blocks (the floor). Run through bench/run.sh scan, or
//
//	bench/run.sh scan
func BenchmarkScan(b *testing.B) {
	path := benchFile(b)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	size := fi.Size()
	data, err := os.ReadFile(path) // also warms the page cache
	if err != nil {
		b.Fatal(err)
	}
	// The exactness check decodes every line: skipped when profiling
	// (TOKENWATCH_BENCH_SKIP_EXACT=1) so that it does not fill the profile.
	if os.Getenv("TOKENWATCH_BENCH_SKIP_EXACT") != "1" {
		want := exact(b, data)
		if got := scan(b, path); got != want {
			b.Fatalf("the agent's path found %d token creates, a full decode of every line %d", got, want)
		}
	}
	data = nil

	b.Run("baseline-grep", func(b *testing.B) {
		grep, err := exec.LookPath("grep")
		if err != nil {
			b.Skip("no grep")
		}
		b.SetBytes(size)
		var n int
		for b.Loop() {
			cmd := exec.Command(grep, "-cF", needle, path)
			cmd.Env = append(os.Environ(), "LC_ALL=C")
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("grep: %v", err)
			}
			n, _ = strconv.Atoi(strings.TrimSpace(string(out)))
		}
		b.ReportMetric(float64(n), "lines-with-needle/op")
	})
	b.Run("read", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, follow.DefaultBlockSize)
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			for {
				_, err := f.Read(buf)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			f.Close()
		}
	})
	b.Run("agent", func(b *testing.B) {
		b.SetBytes(size)
		var n int
		for b.Loop() {
			n = scan(b, path)
		}
		b.ReportMetric(float64(n), "token-creates/op")
	})
}
