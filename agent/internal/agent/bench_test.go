package agent

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/auditgen"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
)

// filterOnly is a follow.Handler that runs the pre-filter and decode and
// keeps nothing: the agent's scan path without the network.
type filterOnly struct {
	f       prefilter.Filter
	ms      []prefilter.Match
	matches int
}

func (h *filterOnly) Block(_ context.Context, b follow.Block) error {
	h.ms, _ = h.f.Block(h.ms[:0], b.Data)
	h.matches += len(h.ms)
	return nil
}

func (h *filterOnly) Loss(context.Context, follow.Loss) error { return nil }

// BenchmarkScan measures read + pre-filter + decode of a generated audit log
// (~1.1 KB lines, 0.5% token creates, the decoys) through the follower, and
// in the same run the baseline `LC_ALL=C grep -cF '"subresource":"token"'`
// on the same warm file. TOKENWATCH_BENCH_LINES sets the size (default
// 100,000 lines, ~110 MB).
//
//	go test ./agent/internal/agent -run XXX -bench Scan -count 6 | benchstat -
func BenchmarkScan(b *testing.B) {
	lines := 100_000
	if v := os.Getenv("TOKENWATCH_BENCH_LINES"); v != "" {
		if _, err := fmt.Sscan(v, &lines); err != nil {
			b.Fatalf("TOKENWATCH_BENCH_LINES=%q: %v", v, err)
		}
	}
	path := filepath.Join(b.TempDir(), "audit.log")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	cfg := auditgen.DefaultConfig()
	cfg.Lines = lines
	if _, _, err := auditgen.Generate(w, cfg); err != nil {
		b.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}

	b.Run("baseline-grep", func(b *testing.B) {
		grep, err := exec.LookPath("grep")
		if err != nil {
			b.Skip("no grep")
		}
		b.SetBytes(fi.Size())
		for b.Loop() {
			cmd := exec.Command(grep, "-cF", `"subresource":"token"`, path)
			cmd.Env = append(os.Environ(), "LC_ALL=C")
			if out, err := cmd.Output(); err != nil {
				b.Fatalf("grep: %v: %s", err, out)
			}
		}
	})
	b.Run("agent-scan", func(b *testing.B) {
		b.SetBytes(fi.Size())
		for b.Loop() {
			fol, err := follow.New(follow.Config{Path: path, StartAt: follow.StartBeginning, Once: true})
			if err != nil {
				b.Fatal(err)
			}
			h := &filterOnly{}
			if err := fol.Run(context.Background(), h); err != nil {
				b.Fatal(err)
			}
			if h.matches == 0 {
				b.Fatal("no token creates found")
			}
		}
	})
}
