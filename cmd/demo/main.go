// Command demo runs tokenwatch end to end on one machine with no cluster and
// no collector: it writes a sample audit log (attacks among routine control
// plane traffic), starts the aggregator with its embedded stdout exporter,
// replays the log with the agent (--once, plaintext on loopback), and prints
// the alerts that came out as the aggregator writes them with --output text.
// Its files are removed at the end unless --keep is given or the demo fails:
// a path it prints is a path that exists.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/auditgen"
)

func main() { os.Exit(run()) }

func run() int {
	keep := flag.Bool("keep", false, "keep the temporary directory (audit log, alerts, process logs)")
	lines := flag.Int("lines", auditgen.DefaultConfig().Lines, "lines in the sample audit log")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: go run ./cmd/demo [flags]\n\nRuns aggregator + agent on a generated audit log and prints the alerts.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "tokenwatch-demo-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	err = demo(ctx, dir, *lines, *keep, os.Stdout)
	if err != nil {
		// The error names files (the aggregator's log): keep them.
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
	}
	if *keep || err != nil {
		fmt.Fprintf(os.Stderr, "demo: files kept in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if err != nil {
		return 1
	}
	return 0
}

// demo runs the demo in dir and prints the alerts to out. It names its
// files (audit log, alerts) only when keep says they will stay.
func demo(ctx context.Context, dir string, lines int, keep bool, out io.Writer) error {
	bin := filepath.Join(dir, "bin")
	if err := buildBinaries(ctx, bin); err != nil {
		return err
	}

	logPath := filepath.Join(dir, "audit.log")
	cfg := auditgen.DefaultConfig()
	cfg.Lines = lines
	want, st, err := writeLog(logPath, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "demo: wrote the sample audit log: %d lines, %d token-create events, %d requests must alert\n", st.Lines, st.TokenCreates, len(want))

	addr, err := freeAddr()
	if err != nil {
		return err
	}
	alertsPath := filepath.Join(dir, "alerts.txt")
	alerts, aggLog, err := createOutputs(alertsPath, filepath.Join(dir, "aggregator.log"))
	if err != nil {
		return err
	}
	defer alerts.Close()
	defer aggLog.Close()
	metrics, err := freeAddr()
	if err != nil {
		return err
	}
	agg := exec.Command(filepath.Join(bin, "aggregator"), "--insecure", "--listen", addr, "--output", "text",
		"--state-dir", filepath.Join(dir, "aggregator-state"), "--metrics-addr", metrics)
	agg.Env = withoutOTLPEnv(os.Environ())
	agg.Stdout, agg.Stderr = alerts, aggLog
	if err := agg.Start(); err != nil {
		return fmt.Errorf("start aggregator: %w", err)
	}
	// aggDone is closed when the aggregator has exited; aggErr is then set.
	aggDone := make(chan struct{})
	var aggErr error
	go func() { aggErr = agg.Wait(); close(aggDone) }()
	defer func() {
		_ = agg.Process.Signal(syscall.SIGTERM)
		select {
		case <-aggDone:
		case <-time.After(15 * time.Second):
			_ = agg.Process.Kill()
			<-aggDone
		}
	}()

	if err := waitReady(ctx, "http://"+metrics+"/readyz", aggDone); err != nil {
		return fmt.Errorf("%w (aggregator log: %s)", err, aggLog.Name())
	}

	fmt.Fprintf(os.Stderr, "demo: replaying with the agent (--once) into the aggregator on %s\n", addr)
	agent := exec.CommandContext(ctx, filepath.Join(bin, "agent"), "--once", "--insecure", "--aggregator", addr,
		"--cluster", "demo", "--node-name", "cp-1", "--audit-log", logPath, "--once-timeout", "1m", "--log-level", "warn")
	agent.Stdout, agent.Stderr = os.Stderr, os.Stderr
	if err := agent.Run(); err != nil {
		return fmt.Errorf("agent: %w (aggregator log: %s)", err, aggLog.Name())
	}

	// Acknowledged means recorded in the aggregator's outbox; a lone
	// RequestReceived alerts after the stage grace. Wait for every expected
	// alert to be exported, then stop the aggregator cleanly.
	if err := waitExported(ctx, alertsPath, len(want), aggDone, &aggErr, aggLog.Name()); err != nil {
		return err
	}
	_ = agg.Process.Signal(syscall.SIGTERM)
	select {
	case <-aggDone:
	case <-time.After(15 * time.Second):
		return errors.New("aggregator did not stop within 15 s")
	}
	return report(out, alertsPath, len(want), keep)
}

// createOutputs creates the files the aggregator writes its alerts
// (stdout) and its log (stderr) to.
func createOutputs(alertsPath, logPath string) (alerts, aggLog *os.File, err error) {
	alerts, err = os.Create(alertsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", alertsPath, err)
	}
	aggLog, err = os.Create(logPath)
	if err != nil {
		alerts.Close()
		return nil, nil, err
	}
	return alerts, aggLog, nil
}

// buildBinaries builds the agent and the aggregator into bin.
func buildBinaries(ctx context.Context, bin string) error {
	fmt.Fprintln(os.Stderr, "demo: building agent and aggregator")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./agent", "./aggregator")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build (run the demo from the repository root): %w", err)
	}
	return nil
}

// waitExported waits, at most 30 s, until alertsPath holds want
// token-request alerts. When aggDone is closed first, the aggregator
// exited early with *aggErr (its log: logName).
func waitExported(ctx context.Context, alertsPath string, want int, aggDone <-chan struct{}, aggErr *error, logName string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, recs, err := readAlerts(alertsPath)
		if err != nil {
			return err
		}
		if countTokenRequests(recs) >= want || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-aggDone:
			return fmt.Errorf("aggregator exited early: %v (log: %s)", *aggErr, logName)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// report prints the alerts the aggregator wrote to alertsPath and checks
// that want of them are token-request alerts.
func report(out io.Writer, alertsPath string, want int, keep bool) error {
	header, recs, err := readAlerts(alertsPath)
	if err != nil {
		return err
	}
	print(out, header, recs)
	n := countTokenRequests(recs)
	fmt.Fprintf(out, "\n%d token-request alerts (%d expected), %d other records.", n, want, len(recs)-n)
	if keep {
		fmt.Fprintf(out, " As the aggregator printed them: %s", alertsPath)
	}
	fmt.Fprintln(out)
	if n != want {
		return fmt.Errorf("got %d token-request alerts, want %d", n, want)
	}
	return nil
}

// waitReady polls the aggregator's /readyz until it answers 200.
func waitReady(ctx context.Context, url string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("aggregator not ready within 30 s")
		}
		select {
		case <-exited:
			return errors.New("aggregator exited before it was ready")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeLog(path string, cfg auditgen.Config) ([]auditgen.Expected, auditgen.Stats, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, auditgen.Stats{}, err
	}
	want, st, err := auditgen.Generate(f, cfg)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return want, st, err
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func withoutOTLPEnv(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "OTEL_EXPORTER_OTLP_") {
			out = append(out, e)
		}
	}
	return out
}

// readAlerts returns the header and the record lines the aggregator has
// written so far (--output text), without a last line still being written.
func readAlerts(path string) (header string, recs []string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	text := string(b)
	if i := strings.LastIndexByte(text, '\n'); i >= 0 {
		text = text[:i]
	} else {
		text = ""
	}
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "TIME "):
			header = l
		case l != "":
			recs = append(recs, l)
		}
	}
	return header, recs, nil
}

// kind is a record line's KIND column: the fourth, after time, severity and
// cluster (a name without spaces).
func kind(line string) string {
	if f := strings.Fields(line); len(f) > 3 {
		return f[3]
	}
	return ""
}

func countTokenRequests(recs []string) int {
	n := 0
	for _, r := range recs {
		if kind(r) == "token_request" {
			n++
		}
	}
	return n
}

// print writes the header and the lines in time order (the first column,
// RFC 3339 in UTC, sorts as text).
func print(w io.Writer, header string, recs []string) {
	slices.SortStableFunc(recs, func(a, b string) int { return strings.Compare(a[:min(len(a), 20)], b[:min(len(b), 20)]) })
	fmt.Fprintln(w, header)
	for _, r := range recs {
		fmt.Fprintln(w, r)
	}
}
