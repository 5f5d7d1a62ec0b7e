package prefilter

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkBlock measures the pre-filter and decode of a block against two
// baselines on the same bytes: `LC_ALL=C grep -cF '"subresource":"token"'`
// on the block written to a file (warm; includes starting grep), and
// bytes.Count of the same literal in process. Neither is exact (escapes are
// missed, decoys counted); the filter is. Run with
//
//	go test ./internal/prefilter -run XXX -bench Block -count 6 | benchstat -
func BenchmarkBlock(b *testing.B) {
	blocks := []struct {
		name  string
		block []byte
	}{
		{"genuine", genuineLog(b)},
		{"mix", bytes.Repeat(mixedBlock(genuineLog(b)), 16)},
	}
	needle := []byte(`"subresource":"token"`)
	grep, grepErr := exec.LookPath("grep")
	for _, bl := range blocks {
		b.Run(bl.name+"/baseline-grep", func(b *testing.B) {
			if grepErr != nil {
				b.Skip("no grep")
			}
			file := filepath.Join(b.TempDir(), "audit.log")
			if err := os.WriteFile(file, bl.block, 0o600); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(bl.block)))
			for b.Loop() {
				cmd := exec.Command(grep, "-cF", string(needle), file)
				cmd.Env = append(os.Environ(), "LC_ALL=C")
				if out, err := cmd.Output(); err != nil {
					b.Fatalf("grep: %v: %s", err, out)
				}
			}
		})
		b.Run(bl.name+"/baseline-count", func(b *testing.B) {
			b.SetBytes(int64(len(bl.block)))
			for b.Loop() {
				bytes.Count(bl.block, needle)
			}
		})
		b.Run(bl.name+"/filter", func(b *testing.B) {
			var f Filter
			var ms []Match
			b.SetBytes(int64(len(bl.block)))
			for b.Loop() {
				ms, _ = f.Block(ms[:0], bl.block)
			}
		})
	}
}

// mixedBlock returns the genuine log's lines with token creates and the
// decoys of the field notes added, so that 0.5% of lines are token creates
// and as many again are decoys.
func mixedBlock(genuine []byte) []byte {
	decoyGet := strings.Replace(tokenCreate, `"verb":"create"`, `"verb":"get"`, 1)
	decoySecret := strings.Replace(tokenCreate, `"resource":"serviceaccounts"`, `"resource":"secrets"`, 1)
	var out bytes.Buffer
	for i, line := range bytes.SplitAfter(genuine, []byte{'\n'}) {
		out.Write(line)
		switch i % 200 {
		case 0:
			out.WriteString(tokenCreate + "\n")
		case 100:
			out.WriteString(decoyGet + "\n")
		case 150:
			out.WriteString(decoySecret + "\n")
		}
	}
	return out.Bytes()
}
