package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is one program started by a test, its stdout and stderr captured to
// files in the test's log directory. The files are shown when the test fails.
type Proc struct {
	Name   string
	Path   string
	Args   []string
	Stdout string // file path
	Stderr string // file path

	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes

	mu    sync.Mutex
	state string // running, exited
}

// LogDir returns a per-test directory for process output: under
// $TOKENWATCH_E2E_LOGS when set (kept after the run, for CI artifacts), else
// in the test's temporary directory.
func LogDir(t testing.TB) string {
	t.Helper()
	if base := os.Getenv("TOKENWATCH_E2E_LOGS"); base != "" {
		dir := filepath.Join(base, filepath.FromSlash(t.Name()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("log dir: %v", err)
		}
		return dir
	}
	return t.TempDir()
}

var runCount sync.Map // name -> *int counter per test log dir

// Start runs bin with args. The process is killed at the end of the test if
// still running; its output is printed when the test failed.
func Start(t testing.TB, logDir, name, bin string, args ...string) *Proc {
	t.Helper()
	return StartOwned(t, t, logDir, name, bin, args...)
}

// StartOwned is Start for a process that outlives the (sub)test t that
// starts it: owner's end kills it and shows its output on failure.
func StartOwned(t, owner testing.TB, logDir, name, bin string, args ...string) *Proc {
	t.Helper()
	p, err := StartErr(logDir, name, bin, args...)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	owner.Cleanup(func() {
		p.Kill()
		if owner.Failed() {
			p.Dump(owner)
		}
	})
	return p
}

// StartErr is Start without a test: the caller owns the process.
func StartErr(logDir, name, bin string, args ...string) (*Proc, error) {
	n := 0
	key := filepath.Join(logDir, name)
	if v, ok := runCount.Load(key); ok {
		n = v.(int) + 1
	}
	runCount.Store(key, n)
	base := filepath.Join(logDir, fmt.Sprintf("%s.%d", name, n))
	stdout, err := os.Create(base + ".stdout")
	if err != nil {
		return nil, fmt.Errorf("create stdout file: %w", err)
	}
	stderr, err := os.Create(base + ".stderr")
	if err != nil {
		stdout.Close()
		return nil, fmt.Errorf("create stderr file: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		stdout.Close()
		stderr.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Proc{Name: name, Path: bin, Args: args, Stdout: stdout.Name(), Stderr: stderr.Name(),
		cmd: cmd, done: make(chan struct{}), state: "running"}
	go func() {
		p.err = cmd.Wait()
		stdout.Close()
		stderr.Close()
		p.mu.Lock()
		p.state = "exited"
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the exit code once exited (-1 for a signal), or -2 while running.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -2
	}
	return p.cmd.ProcessState.ExitCode()
}

// Wait waits for exit up to timeout and returns the exit error (nil for exit 0).
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %v", p.Name, timeout)
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return errors.New("process already exited")
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits up to timeout for exit; the contract asks for
// a clean stop within 10 s. It returns the exit error, or an error when the
// deadline passed (the process is then killed).
func (p *Proc) Stop(timeout time.Duration) error {
	if p.Exited() {
		return p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.Wait(timeout); err != nil && !p.Exited() {
		p.Kill()
		return fmt.Errorf("%s did not stop within %v of SIGTERM (killed)", p.Name, timeout)
	}
	return p.err
}

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Output returns the captured stdout and stderr so far.
func (p *Proc) Output() (stdout, stderr []byte) {
	stdout, _ = os.ReadFile(p.Stdout)
	stderr, _ = os.ReadFile(p.Stderr)
	return stdout, stderr
}

// Dump logs the tail of the process's output to the test log.
func (p *Proc) Dump(t testing.TB) {
	t.Helper()
	const max = 8 << 10
	out, errOut := p.Output()
	tail := func(b []byte) []byte {
		if len(b) > max {
			return append([]byte("...\n"), b[len(b)-max:]...)
		}
		return b
	}
	t.Logf("==== %s %v (exit %d)\n---- stderr %s:\n%s\n---- stdout %s:\n%s", p.Name, p.Args, p.ExitCode(),
		p.Stderr, tail(errOut), p.Stdout, tail(out))
}

// WaitStderr waits until the process's stderr contains substr, the process
// exits, or timeout passes.
func (p *Proc) WaitStderr(substr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, errOut := p.Output()
		if bytes.Contains(errOut, []byte(substr)) {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited (%v) before logging %q", p.Name, p.err, substr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not log %q within %v", p.Name, substr, timeout)
		}
		select {
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitHTTP polls url until it answers 200, the process exits, or timeout
// passes. It is how tests wait for `/readyz`.
func (p *Proc) WaitHTTP(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before %s was ready (last: %s)", p.Name, p.err, url, last)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s within %v (last: %s)", p.Name, url, timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Addr returns "127.0.0.1:port".
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// MetricLines fetches http://addr/metrics and returns the sample lines whose
// names start with prefix (histogram buckets left out), for scenario logs.
func MetricLines(addr, prefix string) []string {
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return []string{"metrics: " + err.Error()}
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	var out []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(l, prefix) && !strings.Contains(l, "_bucket{") {
			out = append(out, l)
		}
	}
	return out
}
