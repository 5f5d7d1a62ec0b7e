package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenwatch/tokenwatch/bench/internal/logfile"
)

// proc is a started benchmark process whose stderr goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func start(name string, logDir string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// wait waits for the process to exit and returns its error with the tail of
// its log.
func (p *proc) wait(ctx context.Context) error {
	select {
	case <-p.done:
	case <-ctx.Done():
		p.stop()
		return ctx.Err()
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w\n%s", p.name, p.err, p.tail())
	}
	return nil
}

// stop sends SIGTERM and waits up to 15 s before killing.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// usage returns the exited process's peak RSS (bytes) and CPU time.
func (p *proc) usage() (peak int64, cpu time.Duration) {
	st := p.cmd.ProcessState
	if st == nil {
		return 0, 0
	}
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		peak = ru.Maxrss << 10 // KiB on Linux
	}
	return peak, st.UserTime() + st.SystemTime()
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls http://addr/readyz until it answers 200, the process
// exits or ctx ends.
func waitReady(ctx context.Context, p *proc, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v\n%s", p.name, p.err, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w\n%s", p.name, ctx.Err(), p.tail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// aggregator starts the aggregator exporting to otlp (an OTLP/gRPC address)
// with its state in dir; extra flags (TLS) replace --insecure.
func startAggregator(ctx context.Context, bin, dir, otlp string, extra ...string) (*proc, string, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	metrics, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	args := []string{"--listen", listen, "--otlp-endpoint", otlp, "--otlp-insecure",
		"--state-dir", filepath.Join(dir, "aggregator-state"), "--metrics-addr", metrics, "--log-level", "warn"}
	if len(extra) == 0 {
		args = append(args, "--insecure")
	}
	args = append(args, extra...)
	p, err := start("aggregator", dir, filepath.Join(bin, "aggregator"), args...)
	if err != nil {
		return nil, "", err
	}
	if err := waitReady(ctx, p, metrics); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, listen, nil
}

// grepResult is the grep baseline on one file.
type grepResult struct {
	Median time.Duration
	Count  int
	Peak   int64 // peak RSS, bytes
}

// grepBaseline runs `LC_ALL=C grep -cF '"subresource":"token"' path` runs
// times on the warm file and returns the median time.
func grepBaseline(ctx context.Context, path string, runs int) (grepResult, error) {
	if err := warm(path); err != nil {
		return grepResult{}, err
	}
	var times []time.Duration
	var r grepResult
	for range runs {
		cmd := exec.CommandContext(ctx, "grep", "-cF", `"subresource":"token"`, path)
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		t0 := time.Now()
		out, err := cmd.Output()
		if err != nil {
			return r, fmt.Errorf("grep %s: %w", path, err)
		}
		times = append(times, time.Since(t0))
		r.Count, _ = strconv.Atoi(strings.TrimSpace(string(out)))
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.Peak = max(r.Peak, ru.Maxrss<<10)
		}
	}
	r.Median = median(times)
	return r, nil
}

// warm reads the file once so that it is in the page cache.
func warm(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("warm %s: %w", path, err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		_, err := f.Read(buf)
		if err != nil {
			break
		}
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// countLines counts the newlines of the file.
func countLines(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("count lines of %s: %w", path, err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := f.Read(buf)
		n += int64(bytes.Count(buf[:k], []byte{'\n'}))
		if err != nil {
			break
		}
	}
	return n, nil
}

func mbps(size int64, d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// cacheDir is ${TOKENWATCH_CACHE:-$HOME/.cache/tokenwatch}.
func cacheDir() string {
	if c := os.Getenv("TOKENWATCH_CACHE"); c != "" {
		return c
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "tokenwatch-cache")
	}
	return filepath.Join(home, ".cache", "tokenwatch")
}

// logFlag resolves -log (a path) or -size (a cached generated log).
func resolveLog(path, size string) (string, error) {
	if path != "" {
		return path, nil
	}
	n, err := logfile.ParseSize(size)
	if err != nil {
		return "", err
	}
	return logfile.Ensure(filepath.Join(cacheDir(), "logs"), 1, n)
}
