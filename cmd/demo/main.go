// Command demo runs tokenwatch end to end on one machine with no cluster and
// no collector: it writes a sample audit log (attacks among routine control
// plane traffic), starts the aggregator with its embedded stdout exporter,
// replays the log with the agent (--once, plaintext on loopback), and prints
// the alerts that came out.
package main

import (
	"bufio"
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
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/encoding/protojson"

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
	if *keep {
		fmt.Fprintf(os.Stderr, "demo: files kept in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if err := demo(ctx, dir, *lines, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, dir string, lines int, out io.Writer) error {
	bin := filepath.Join(dir, "bin")
	fmt.Fprintln(os.Stderr, "demo: building agent and aggregator")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./agent", "./aggregator")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build (run the demo from the repository root): %w", err)
	}

	logPath := filepath.Join(dir, "audit.log")
	cfg := auditgen.DefaultConfig()
	cfg.Lines = lines
	want, st, err := writeLog(logPath, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "demo: wrote %s: %d lines, %d token-create events, %d requests must alert\n", logPath, st.Lines, st.TokenCreates, len(want))

	addr, err := freeAddr()
	if err != nil {
		return err
	}
	alertsPath := filepath.Join(dir, "alerts.jsonl")
	alerts, err := os.Create(alertsPath)
	if err != nil {
		return fmt.Errorf("create %s: %w", alertsPath, err)
	}
	defer alerts.Close()
	aggLog, err := os.Create(filepath.Join(dir, "aggregator.log"))
	if err != nil {
		return err
	}
	defer aggLog.Close()
	metrics, err := freeAddr()
	if err != nil {
		return err
	}
	agg := exec.Command(filepath.Join(bin, "aggregator"), "--insecure", "--listen", addr,
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
	deadline := time.Now().Add(30 * time.Second)
	var recs []row
	for {
		recs, err = readAlerts(alertsPath)
		if err != nil {
			return err
		}
		if countTokenRequests(recs) >= len(want) || time.Now().After(deadline) {
			break
		}
		select {
		case <-aggDone:
			return fmt.Errorf("aggregator exited early: %v (log: %s)", aggErr, aggLog.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	_ = agg.Process.Signal(syscall.SIGTERM)
	select {
	case <-aggDone:
	case <-time.After(15 * time.Second):
		return errors.New("aggregator did not stop within 15 s")
	}
	if recs, err = readAlerts(alertsPath); err != nil {
		return err
	}
	print(out, recs)
	n := countTokenRequests(recs)
	fmt.Fprintf(out, "\n%d token-request alerts (%d expected), %d other records. Raw OTLP JSON: %s\n", n, len(want), len(recs)-n, alertsPath)
	if n != len(want) {
		return fmt.Errorf("got %d token-request alerts, want %d", n, len(want))
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

type row struct {
	event, severity, time, body string
	attrs                       map[string]string
}

func readAlerts(path string) ([]row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows []row
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var req collogspb.ExportLogsServiceRequest
		if err := protojson.Unmarshal(sc.Bytes(), &req); err != nil {
			// The last line may still be being written.
			continue
		}
		for _, rl := range req.GetResourceLogs() {
			for _, sl := range rl.GetScopeLogs() {
				for _, lr := range sl.GetLogRecords() {
					r := row{event: lr.GetEventName(), severity: lr.GetSeverityText(), body: lr.GetBody().GetStringValue(),
						time: time.Unix(0, int64(lr.GetTimeUnixNano())).UTC().Format(time.RFC3339), attrs: map[string]string{}}
					for _, kv := range lr.GetAttributes() {
						r.attrs[kv.GetKey()] = valueString(kv.GetValue())
					}
					rows = append(rows, r)
				}
			}
		}
	}
	return rows, sc.Err()
}

func valueString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_ArrayValue:
		var s []string
		for _, e := range x.ArrayValue.GetValues() {
			s = append(s, valueString(e))
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	return ""
}

func countTokenRequests(rows []row) int {
	n := 0
	for _, r := range rows {
		if r.event == "tokenwatch.token_request" {
			n++
		}
	}
	return n
}

func print(w io.Writer, rows []row) {
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].time < rows[j].time })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tSEVERITY\tUSER\tTARGET\tOUTCOME\tSOURCE\tNOTE")
	for _, r := range rows {
		a := r.attrs
		target := a["kubernetes.audit.objectRef.namespace"] + "/" + a["kubernetes.audit.objectRef.name"]
		note := a["tokenwatch.exclusion.mismatch"]
		if a["tokenwatch.dry_run"] == "true" {
			note = strings.TrimSpace("dry run " + note)
		}
		if imp := a["kubernetes.audit.impersonatedUser.username"]; imp != "" {
			note = strings.TrimSpace("as " + imp + " " + note)
		}
		user := a["user.name"]
		switch r.event {
		case "tokenwatch.correlation":
			target, note = a["tokenwatch.correlation.kind"], a["k8s.cluster.names"]
			if user == "" {
				user = a["source.ip"]
			}
		case "tokenwatch.pipeline":
			target, note = a["tokenwatch.pipeline.kind"], r.body
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.time, strings.TrimPrefix(r.event, "tokenwatch."), r.severity,
			user, target, a["event.outcome"], a["source.ip"], note)
	}
	tw.Flush()
}
