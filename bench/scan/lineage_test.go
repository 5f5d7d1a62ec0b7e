package scan_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/bench/internal/logfile"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
)

// lineageReader is the agent's read path with lineage: every block through
// the pre-filter and decode of token creates, and through the lineage
// matcher (linematch.Matcher.BlockMarked, with the pre-filter's marks of
// the block) under a watch set; with index, each
// block's location also goes into a lookback index, one entry per block, as
// the agent's (agent/internal/uses) does.
type lineageReader struct {
	f       prefilter.Filter
	ms      []prefilter.Match
	m       linematch.Matcher
	hits    []linematch.Hit
	set     *linematch.Set
	index   bool
	blocks  []blockEntry
	read    time.Time
	creates int
	uses    int
}

// blockEntry is a lookback entry of the agent: a block's location and read
// time.
type blockEntry struct {
	loc  linematch.Location
	read int64
}

func (r *lineageReader) Block(_ context.Context, b follow.Block) error {
	r.ms, _ = r.f.Block(r.ms[:0], b.Data)
	r.creates += len(r.ms)
	r.hits, _ = r.m.BlockMarked(r.hits[:0], b.Data, r.set, r.f.Marks())
	if r.index {
		loc := linematch.Location{Offset: uint64(b.Pos.Offset), Length: uint32(len(b.Data))}
		r.blocks = append(r.blocks, blockEntry{loc: loc, read: r.read.UnixNano()})
	}
	r.uses += len(r.hits)
	return nil
}

func (r *lineageReader) Loss(context.Context, follow.Loss) error { return nil }

// scanLineage reads path to its end as `agent --once` does, with the
// lineage matcher under set (and the agent's block index when index is
// set), and returns the token creates and lineage hits found.
func scanLineage(tb testing.TB, path string, set *linematch.Set, index bool) (creates, uses int) {
	tb.Helper()
	fol, err := follow.New(follow.Config{Path: path, StartAt: follow.StartBeginning, Once: true})
	if err != nil {
		tb.Fatal(err)
	}
	r := lineageReader{set: set, index: index, read: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	if err := fol.Run(context.Background(), &r); err != nil {
		tb.Fatal(err)
	}
	return r.creates, r.uses
}

// exactLineage counts the lines of data that Classify matches under set,
// decoding every line.
func exactLineage(tb testing.TB, data []byte, set *linematch.Set) int {
	tb.Helper()
	n := 0
	for line := range bytes.Lines(data) {
		ev, err := audit.Decode(line)
		if err != nil {
			tb.Fatalf("decode: %v", err)
		}
		if linematch.Classify(ev, set) != 0 {
			n++
		}
	}
	return n
}

// watchedSet is the watch set of variant (b): 10,000 watched tokens and
// 1,000 followed minters (500 by user name, 500 by credential). 20 of the
// tokens, 10 of the names and 10 of the credentials belong to the lineage
// log's workloads (logfile.Workloads); the others are not in any log.
func watchedSet(tb testing.TB) *linematch.Set {
	tb.Helper()
	ws := logfile.Workloads(1, logfile.LineageWorkloads)
	other := func(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }
	var watches []linematch.Watch
	for i := range 10_000 {
		key := other(i)
		if i < 20 {
			key = ws[i].JTI
		}
		watches = append(watches, linematch.Watch{Kind: linematch.Token, Key: key})
	}
	for i := range 500 {
		name, cred := fmt.Sprintf("user-%d@example.com", i), other(100_000+i)
		if i < 10 {
			name, cred = ws[20+i].User, ws[30+i].JTI
		}
		watches = append(watches, linematch.Watch{Kind: linematch.ActorUser, Key: name},
			linematch.Watch{Kind: linematch.ActorCredential, Key: cred})
	}
	s := &linematch.Set{}
	for _, w := range watches {
		if err := s.Add(w); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// BenchmarkLineageScan measures the agent's read path with the lineage
// matcher over a warm file, next to `LC_ALL=C grep -cF
// '"subresource":"token"'` and the agent's path without lineage on the same
// file:
//
//   - agent: follow + prefilter + decode (as BenchmarkScan);
//   - idle: the same + linematch Block with no watch and the agent's
//     lookback index, one entry per block (variant (a): lineage on,
//     nothing watched yet);
//   - watched: the same with 10,000 watched tokens and 1,000 followed
//     minters (variant (b), on the lineage log).
//
// The lookback's other cost, reading blocks again when a watch arrives,
// falls on the watch's arrival, not on the scan: bench/lineage-rss.sh
// reports it (tokenwatch_agent_lineage_lookback_rescanned_bytes_total).
//
// Each contender's hits are checked against a full decode and Classify of
// every line (skipped with TOKENWATCH_BENCH_SKIP_EXACT=1). Run through
//
//	bench/run.sh lineage
func BenchmarkLineageScan(b *testing.B) {
	path := benchFile(b)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	size := fi.Size()
	idle, watched := &linematch.Set{}, watchedSet(b)
	if os.Getenv("TOKENWATCH_BENCH_SKIP_EXACT") != "1" {
		checkLineage(b, path, idle, watched)
	}
	b.Run("baseline-grep", func(b *testing.B) {
		b.SetBytes(size)
		var n int
		var cpu time.Duration
		for b.Loop() {
			c, lines := grepCount(b, path)
			cpu += c
			n = lines
		}
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(n), "lines-with-needle/op")
	})
	b.Run("agent", func(b *testing.B) {
		b.SetBytes(size)
		var n int
		start := cpuTime(b)
		for b.Loop() {
			n = scan(b, path)
		}
		b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(n), "token-creates/op")
	})
	for _, c := range []struct {
		name  string
		set   *linematch.Set
		index bool
	}{{"idle", idle, true}, {"watched", watched, true}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(size)
			var n int
			start := cpuTime(b)
			for b.Loop() {
				_, n = scanLineage(b, path, c.set, c.index)
			}
			b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(n), "lineage-hits/op")
		})
	}
	// The same comparison made iteration by iteration: on a machine whose
	// speed moves between the contenders' runs, each ratio is of two runs
	// made next to each other.
	b.Run("watched-paired", func(b *testing.B) {
		var ratios []float64
		for b.Loop() {
			g, _ := grepCount(b, path)
			start := cpuTime(b)
			scanLineage(b, path, watched, true)
			ratios = append(ratios, float64(cpuTime(b)-start)/float64(g))
		}
		slices.Sort(ratios)
		b.ReportMetric(ratios[len(ratios)/2], "cpu-vs-grep")
	})
}

// grepCount runs `LC_ALL=C grep -cF needle path` and returns its CPU time
// (user and system) and count.
func grepCount(b *testing.B, path string) (time.Duration, int) {
	b.Helper()
	grep, err := exec.LookPath("grep")
	if err != nil {
		b.Skip("no grep")
	}
	cmd := exec.Command(grep, "-cF", needle, path)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("grep: %v", err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), n
}

// cpuTime returns the CPU time (user and system) the process has used: on
// a machine shared with other work it moves less than wall time.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// checkLineage fails unless the lineage path finds exactly what a full
// decode finds, token creates and lineage hits, under both sets.
func checkLineage(b *testing.B, path string, idle, watched *linematch.Set) {
	b.Helper()
	data, err := os.ReadFile(path) // also warms the page cache
	if err != nil {
		b.Fatal(err)
	}
	wantCreates := exact(b, data)
	for _, c := range []struct {
		set   *linematch.Set
		index bool
	}{{idle, true}, {watched, true}} {
		want := exactLineage(b, data, c.set)
		creates, uses := scanLineage(b, path, c.set, c.index)
		if creates != wantCreates || uses != want {
			b.Fatalf("the lineage path found %d token creates and %d lineage hits, a full decode %d and %d",
				creates, uses, wantCreates, want)
		}
	}
}
