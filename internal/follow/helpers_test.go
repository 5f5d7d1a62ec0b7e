package follow

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	var opts []goleak.Option
	if os.Getenv("TOKENWATCH_FOLLOW_COMPARE") != "" {
		// nxadm/tail keeps a process-wide inotify watcher.
		opts = append(opts, goleak.IgnoreAnyFunction("github.com/fsnotify/fsnotify.(*inotify).readEvents"))
	}
	goleak.VerifyTestMain(m, append(opts,
		// lumberjack's compression goroutine lives as long as the process.
		goleak.IgnoreAnyFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"),
		// nxadm/tail's shared inotify tracker (comparison test only).
		goleak.IgnoreAnyFunction("github.com/nxadm/tail/watch.(*InotifyTracker).run"),
		goleak.IgnoreAnyFunction("gopkg.in/tomb%2ev1.(*Tomb).Wait"),
	)...)
}

// failAfter bounds every wait on a signal: reaching it is a failure, not a
// timing assertion.
const failAfter = 60 * time.Second

// line is one delivered line and where it was read.
type line struct {
	pos  Position
	text string
}

// recorder is a Handler that keeps what it is given and signals progress.
// gate, when set, is received from before each block is recorded: the test
// holds the follower inside the handler by not sending.
type recorder struct {
	mu      sync.Mutex
	lines   []line
	losses  []Loss
	blocks  int
	signal  chan struct{}
	gate    chan struct{}
	onBlock func(n int) // called with the block count, from Run's goroutine
}

func newRecorder() *recorder { return &recorder{signal: make(chan struct{}, 1)} }

func (r *recorder) Block(ctx context.Context, b Block) error {
	if len(b.Data) == 0 || b.Data[len(b.Data)-1] != '\n' {
		return fmt.Errorf("block at %d does not end in a newline", b.Pos.Offset)
	}
	r.mu.Lock()
	r.blocks++
	n := r.blocks
	r.mu.Unlock()
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.onBlock != nil {
		r.onBlock(n)
	}
	r.mu.Lock()
	off := b.Pos.Offset
	for rest := b.Data; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		r.lines = append(r.lines, line{pos: Position{ID: b.Pos.ID, Name: b.Pos.Name, Offset: off}, text: string(rest[:i+1])})
		off += int64(i + 1)
		rest = rest[i+1:]
	}
	r.mu.Unlock()
	r.notify()
	return nil
}

func (r *recorder) Loss(ctx context.Context, l Loss) error {
	r.mu.Lock()
	r.losses = append(r.losses, l)
	r.mu.Unlock()
	r.notify()
	return nil
}

func (r *recorder) notify() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

func (r *recorder) snapshot() ([]line, []Loss) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]line(nil), r.lines...), append([]Loss(nil), r.losses...)
}

// waitFor waits until cond holds over what was recorded.
func (r *recorder) waitFor(t *testing.T, what string, cond func(lines []line, losses []Loss) bool) {
	t.Helper()
	deadline := time.After(failAfter)
	for {
		lines, losses := r.snapshot()
		if cond(lines, losses) {
			return
		}
		select {
		case <-r.signal:
		case <-deadline:
			t.Fatalf("waiting for %s: have %d lines, losses %+v", what, len(lines), losses)
		}
	}
}

func (r *recorder) waitLines(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(failAfter)
	for {
		r.mu.Lock()
		have := len(r.lines)
		r.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-r.signal:
		case <-deadline:
			_, losses := r.snapshot()
			t.Fatalf("waiting for %d lines: have %d lines, losses %+v", n, have, losses)
		}
	}
}

// runFollower starts Run in a goroutine; the returned stop cancels it and
// returns Run's error.
func runFollower(t *testing.T, cfg Config, h Handler, setup ...func(*Follower)) (f *Follower, stop func() error) {
	t.Helper()
	if cfg.Poll == 0 {
		cfg.Poll = 20 * time.Millisecond
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range setup {
		fn(f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan struct{})
	f.started = started
	go func() { done <- f.Run(ctx, h) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
			if errors.Is(runErr, context.Canceled) {
				runErr = nil
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if cfg.Once {
		return f, stop
	}
	select {
	case <-started:
	case err := <-done:
		done <- err
	}
	return f, stop
}

// seqLine is a numbered test line of about size bytes.
func seqLine(prefix string, i, size int) string {
	s := fmt.Sprintf(`{"seq":"%s-%06d","pad":"`, prefix, i)
	pad := max(0, size-len(s)-3)
	return s + strings.Repeat("x", pad) + "\"}\n"
}

func appendFile(t *testing.T, path string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(strings.Join(lines, "")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func gzipFile(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(data)
	zw.Close()
	if err := os.WriteFile(path+".gz", b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func lines(prefix string, from, to, size int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, seqLine(prefix, i, size))
	}
	return out
}

func texts(ls []line) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.text
	}
	return out
}

// fileData returns every file's data in dir (decompressed for .gz). A
// writer may still be compressing backups (lumberjack does it in the
// background, with no signal to wait for): a file vanishing or a gzip
// stream still incomplete means reading the folder again.
func fileData(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	deadline := time.Now().Add(failAfter)
	for {
		out, err := readAll(dir)
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readAll(dir string) (map[string][]byte, error) {
	out := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(p, ".gz") {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			if data, err = io.ReadAll(zr); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
		out[p] = data
	}
	return out, nil
}

// checkOffsets asserts that every delivered line sits at its offset in
// the file its identity names, contiguously from where that file's
// delivery began, and that each identity is found on disk exactly.
func checkOffsets(t *testing.T, dir string, got []line) {
	t.Helper()
	files := fileData(t, dir)
	type run struct {
		id    Identity
		start int64
		data  []byte
	}
	var runs []*run
	for _, l := range got {
		if len(runs) > 0 {
			r := runs[len(runs)-1]
			if r.id.Same(l.pos.ID) && l.pos.Offset == r.start+int64(len(r.data)) {
				r.data = append(r.data, l.text...)
				r.id = l.pos.ID
				continue
			}
		}
		runs = append(runs, &run{id: l.pos.ID, start: l.pos.Offset, data: []byte(l.text)})
	}
	for _, r := range runs {
		found := false
		for _, data := range files {
			if r.id.FPLen > len(data) || !bytes.Equal(sha(data[:r.id.FPLen]), r.id.FP) {
				continue
			}
			end := r.start + int64(len(r.data))
			if end <= int64(len(data)) && bytes.Equal(data[r.start:end], r.data) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("%d bytes delivered at offset %d of %v are not at that offset in any file", len(r.data), r.start, r.id)
		}
	}
}

func sha(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func timeAt(hour int) time.Time { return time.Date(2026, 11, 27, hour, 0, 0, 0, time.UTC) }
