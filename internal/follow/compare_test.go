package follow

// The comparison with nxadm/tail behind docs/FOLLOWING.md. It measures and
// logs; it only fails when this package loses or reorders a line. Run it
// with
//
//	TOKENWATCH_FOLLOW_COMPARE=1 go test -run Compare -v ./internal/follow/

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nxadm/tail"
)

func compareEnabled(t *testing.T) {
	if os.Getenv("TOKENWATCH_FOLLOW_COMPARE") == "" {
		t.Skip("set TOKENWATCH_FOLLOW_COMPARE=1 to measure against nxadm/tail")
	}
}

// tailCollector follows path with nxadm/tail as the design had it
// (Follow, ReOpen, CompleteLines) and counts distinct sequence numbers.
type tailCollector struct {
	t     *tail.Tail
	mu    sync.Mutex
	seen  map[string]bool
	lines int
	done  chan struct{}
}

func startTail(tb testing.TB, path string, poll bool, gate <-chan struct{}) *tailCollector {
	tl, err := tail.TailFile(path, tail.Config{
		Follow: true, ReOpen: true, CompleteLines: true, Poll: poll,
		Location: &tail.SeekInfo{Offset: 0, Whence: io.SeekStart}, Logger: tail.DiscardingLogger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	c := &tailCollector{t: tl, seen: map[string]bool{}, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		if gate != nil {
			<-gate // a consumer that is behind (a slow aggregator, a restart)
		}
		for l := range tl.Lines {
			c.mu.Lock()
			c.lines++
			if i := strings.Index(l.Text, `"seq":"`); i >= 0 {
				c.seen[l.Text[i+7:i+7+16]] = true
			}
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *tailCollector) count() (distinct, lines int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen), c.lines
}

// settle waits until the collector has want lines or has received nothing
// new for quiet. This is a measurement of a follower that may never catch
// up, so it ends on quiet, not on a signal.
func (c *tailCollector) settle(want int, quiet time.Duration) {
	last, lastChange := -1, time.Now()
	for {
		n, _ := c.count()
		if n >= want || time.Since(lastChange) > quiet {
			return
		}
		if n != last {
			last, lastChange = n, time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *tailCollector) stop() {
	c.t.Stop()
	c.t.Cleanup()
	<-c.done
}

func TestCompareRotationLoss(t *testing.T) {
	compareEnabled(t)
	for _, behind := range []bool{false, true} {
		t.Run("behind="+strconv.FormatBool(behind), func(t *testing.T) { compareRotation(t, behind) })
	}
}

func compareRotation(t *testing.T, behind bool) {
	rot := 40
	if s := os.Getenv("TOKENWATCH_FOLLOW_ROTATIONS"); s != "" {
		rot, _ = strconv.Atoi(s)
	}
	const size = 1000
	n := rot * (1 << 20) / size
	dir := t.TempDir()
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live) // exists, so every follower starts on it
	var gate chan struct{}
	if behind {
		gate = make(chan struct{})
	}
	inotify := startTail(t, live, false, gate)
	polling := startTail(t, live, true, gate)
	rec := newRecorder()
	rec.gate = gate
	f, _ := runFollower(t, Config{Path: live, StartAt: StartBeginning}, rec)

	var mbps float64 // 0: as fast as lumberjack writes
	if s := os.Getenv("TOKENWATCH_FOLLOW_RATE_MBPS"); s != "" {
		mbps, _ = strconv.ParseFloat(s, 64)
	}
	start := time.Now()
	writeRotatingRate(t, live, n, size, mbps)
	elapsed := time.Since(start)
	if behind {
		close(gate) // every consumer catches up only now
	}
	rec.waitLines(t, n)
	inotify.settle(n, 3*time.Second)
	polling.settle(n, 3*time.Second)
	inotify.stop()
	polling.stop()

	got, losses := rec.snapshot()
	for i, l := range got {
		if want := seqLine("lj", i, size); l.text != want {
			t.Fatalf("follow: line %d = %.40q, want %.40q", i, l.text, want)
		}
	}
	if len(got) != n || len(losses) != 0 {
		t.Fatalf("follow: %d lines, losses %+v; want %d, none", len(got), losses, n)
	}
	di, li := inotify.count()
	dp, lp := polling.count()
	t.Logf("lumberjack: %d lines of %d bytes, %d rotations (MaxSize 1 MB, Compress), written in %v (%.0f MB/s); consumers behind: %v",
		n, size, rot, elapsed.Round(time.Millisecond), float64(n*size)/1e6/elapsed.Seconds(), behind)
	t.Logf("follow:              %d of %d delivered, lost 0, rotations seen %d", len(got), n, f.Stats().Rotations)
	t.Logf("nxadm/tail inotify:  %d of %d distinct (%d lines received), lost %d (%.1f%%)", di, n, li, n-di, 100*float64(n-di)/float64(n))
	t.Logf("nxadm/tail poll:     %d of %d distinct (%d lines received), lost %d (%.1f%%)", dp, n, lp, n-dp, 100*float64(n-dp)/float64(n))
}

// bigLog writes mb MiB of genuine kube-apiserver audit lines (one backup
// of a real apiserver, repeated).
func bigLog(tb testing.TB, mb int) (path string, candidates int) {
	raw, err := os.ReadFile("testdata/audit-2026-11-26T23-09-18.959.log.gz")
	if err != nil {
		tb.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		tb.Fatal(err)
	}
	one, err := io.ReadAll(zr)
	if err != nil {
		tb.Fatal(err)
	}
	path = filepath.Join(tb.TempDir(), "audit.log")
	out, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(out, 1<<20)
	per := bytes.Count(one, needle)
	for written := 0; written < mb<<20; written += len(one) {
		w.Write(one)
		candidates += per
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	out.Close()
	return path, candidates
}

var needle = []byte(`"subresource":"token"`)

// countLines counts the lines of data holding needle.
func countLines(data []byte) int {
	n := 0
	for len(data) > 0 {
		i := bytes.Index(data, needle)
		if i < 0 {
			break
		}
		n++
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			break
		}
		data = data[i+j+1:]
	}
	return n
}

type countHandler struct{ n int }

func (c *countHandler) Block(_ context.Context, b Block) error {
	c.n += countLines(b.Data)
	return nil
}
func (c *countHandler) Loss(context.Context, Loss) error { return nil }

func TestCompareThroughput(t *testing.T) {
	compareEnabled(t)
	mb := 256
	if s := os.Getenv("TOKENWATCH_FOLLOW_COMPARE_MB"); s != "" {
		mb, _ = strconv.Atoi(s)
	}
	path, want := bigLog(t, mb)
	fi, _ := os.Stat(path)
	size := float64(fi.Size())
	ways := []struct {
		name string
		run  func() int
	}{
		{"grep -cF (reference)", func() int {
			cmd := exec.Command("grep", "-cF", string(needle), path)
			cmd.Env = append(os.Environ(), "LC_ALL=C")
			out, err := cmd.Output()
			if err != nil {
				t.Skipf("grep: %v", err)
			}
			n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
			return n
		}},
		{"follow (Once, 1 MiB blocks) + bytes.Index", func() int {
			f, err := New(Config{Path: path, Once: true, StartAt: StartBeginning})
			if err != nil {
				t.Fatal(err)
			}
			h := &countHandler{}
			if err := f.Run(context.Background(), h); err != nil {
				t.Fatal(err)
			}
			return h.n
		}},
		{"bufio.Scanner + bytes.Contains", func() int {
			file, _ := os.Open(path)
			defer file.Close()
			sc := bufio.NewScanner(file)
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			n := 0
			for sc.Scan() {
				if bytes.Contains(sc.Bytes(), needle) {
					n++
				}
			}
			return n
		}},
		{"nxadm/tail (CompleteLines) + strings.Contains", func() int {
			tl, err := tail.TailFile(path, tail.Config{CompleteLines: true, Logger: tail.DiscardingLogger})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for l := range tl.Lines {
				if strings.Contains(l.Text, string(needle)) {
					n++
				}
			}
			tl.Cleanup()
			return n
		}},
	}
	best := map[string]time.Duration{}
	for round := 0; round < 3; round++ { // the first round warms the page cache
		for _, w := range ways {
			start := time.Now()
			got := w.run()
			d := time.Since(start)
			if got != want {
				t.Errorf("%s counted %d, want %d", w.name, got, want)
			}
			if b, ok := best[w.name]; round > 0 && (!ok || d < b) {
				best[w.name] = d
			}
		}
	}
	ref := best[ways[0].name]
	t.Logf("%d MB of genuine audit lines, best of 2 warm runs:", int(size/1e6))
	for _, w := range ways {
		d := best[w.name]
		t.Logf("  %-46s %7v  %6.0f MB/s  %5.2fx grep", w.name, d.Round(time.Millisecond), size/1e6/d.Seconds(), float64(d)/float64(ref))
	}
}
