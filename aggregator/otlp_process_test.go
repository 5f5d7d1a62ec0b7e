package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildAggregator builds this program once per test that needs the real
// binary: the environment it reads is the process's own.
func buildAggregator(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the aggregator with")
	}
	bin := filepath.Join(t.TempDir(), "aggregator")
	out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cleanEnv is the test's environment without OTEL_* variables, plus add.
func cleanEnv(add ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(env, add...)
}

// TestOTLPEndpointProcess runs the built aggregator with the OTLP endpoint
// in the flag and the environment: a bad value, a contradiction between a
// URL scheme and the insecure setting, or another protocol than gRPC exits
// 2 with one line naming the flag or variable; a good one starts and logs
// (as JSON, like every line) the effective endpoint, protocol and TLS mode,
// and warns when the export is plaintext to a collector not on loopback.
func TestOTLPEndpointProcess(t *testing.T) {
	bin := buildAggregator(t)
	base := []string{"--insecure", "--listen", "127.0.0.1:0", "--state-dir", t.TempDir()}
	refused := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"env without port", nil, []string{"OTEL_EXPORTER_OTLP_ENDPOINT=collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT \"collector\": want HOST:PORT"},
		{"flag https with --otlp-insecure", []string{"--otlp-endpoint", "https://collector:4317", "--otlp-insecure"}, nil, "--otlp-insecure says plaintext"},
		{"env http with insecure false", nil, []string{"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=http://collector:4317", "OTEL_EXPORTER_OTLP_INSECURE=false"}, "the http scheme means plaintext"},
		{"http protocol", []string{"--otlp-endpoint", "collector:4317"}, []string{"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/protobuf\": only grpc"},
		{"flag path", []string{"--otlp-endpoint", "http://collector:4318/v1/logs"}, nil, "--otlp-endpoint \"http://collector:4318/v1/logs\""},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			// A guard only: a refused start exits at once; one that
			// is not refused would serve until killed.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append(append([]string(nil), base...), tt.args...)...)
			cmd.Env = cleanEnv(tt.env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err == nil {
				code = 0
			}
			got := stderr.String()
			if code != 2 || strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "aggregator: ") || !strings.Contains(got, tt.want) {
				t.Errorf("exit %d, stderr %q; want exit 2 and one line containing %q", code, got, tt.want)
			}
		})
	}

	started := []struct {
		name      string
		args      []string
		env       []string
		endpoint  string
		tls       string
		plainWarn bool
	}{
		{"env host:port, env insecure", nil, []string{"OTEL_EXPORTER_OTLP_ENDPOINT=10.9.9.9:4317", "OTEL_EXPORTER_OTLP_INSECURE=true"}, "10.9.9.9:4317", "plaintext", true},
		{"env host:port, tls", nil, []string{"OTEL_EXPORTER_OTLP_ENDPOINT=10.9.9.9:4317"}, "10.9.9.9:4317", "tls", false},
		{"flag http url on loopback", []string{"--otlp-endpoint", "http://localhost:4317"}, nil, "localhost:4317", "plaintext", false},
	}
	for _, tt := range started {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--insecure", "--listen", "127.0.0.1:0", "--state-dir", t.TempDir()}
			cmd := exec.Command(bin, append(args, tt.args...)...)
			cmd.Env = cleanEnv(tt.env...)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var lines []map[string]any
			var export map[string]any
			plainWarn, serving := false, false
			sc := bufio.NewScanner(stderr)
			for !serving && sc.Scan() {
				var l map[string]any
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					t.Errorf("stderr line is not a JSON log line: %q", sc.Text())
					continue
				}
				lines = append(lines, l)
				msg, _ := l["msg"].(string)
				if strings.Contains(msg, "plaintext to a collector that is not on loopback") {
					plainWarn = true
				}
				switch msg {
				case "OTLP export":
					export = l
				case "aggregator serving": // after the exporter is made
					serving = true
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() {
				for sc.Scan() {
				}
				done <- cmd.Wait()
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("aggregator after SIGTERM: %v", err)
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatal("aggregator did not stop within 30 s of SIGTERM")
			}
			if export == nil {
				t.Fatalf("no \"OTLP export\" line in %v", lines)
			}
			if export["endpoint"] != tt.endpoint || export["protocol"] != "grpc" || export["tls"] != tt.tls {
				t.Errorf("OTLP export line = %v, want endpoint %s, protocol grpc, tls %s", export, tt.endpoint, tt.tls)
			}
			if plainWarn != tt.plainWarn {
				t.Errorf("plaintext warning logged = %v, want %v", plainWarn, tt.plainWarn)
			}
		})
	}
}
