package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// The load of TestMemoryBoundUnderContainerLimit: memStreams agents, each of
// its own cluster, reconnecting with a backlog of memBacklog events that
// they send as fast as acknowledgements allow (16 batches of 512 in flight,
// as the agent's sender).
const (
	memStreams = 400
	memBacklog = 8192
	memLimit   = "512m" // the deploy kit's resources.limits.memory
	memLimitB  = 512 << 20
)

// TestMemoryBoundUnderContainerLimit is issue 12's point 5: the aggregator
// image, run under the deploy kit's memory limit (docker run --memory 512m,
// no swap) with hundreds of backlogged streams at default limits, must
// never be killed and must acknowledge every event. Before the fleet-wide
// budget and the soft memory limit it was OOM-killed after acknowledging a
// fraction of the backlog.
func TestMemoryBoundUnderContainerLimit(t *testing.T) {
	memRequireDocker(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	image := memBuildImage(t, root)
	twbench := filepath.Join(dir, "twbench")
	memGoBuild(t, root, twbench, "./bench/cmd/twbench")

	sink := harness.StartSink(t)
	listen, metrics := harness.Addr(harness.FreePort(t)), harness.Addr(harness.FreePort(t))
	name := fmt.Sprintf("tokenwatch-e2e-memory-%d", time.Now().UnixNano())
	// Host networking: --insecure needs a loopback --listen, and the sink
	// listens on the host's loopback.
	id := memDocker(t, "run", "-d", "--name", name, "--network", "host",
		"--memory", memLimit, "--memory-swap", memLimit, image,
		"--insecure", "--listen", listen, "--metrics-addr", metrics,
		"--otlp-endpoint", sink.Endpoint, "--otlp-insecure")
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := exec.Command("docker", "logs", "--tail", "40", id).CombinedOutput()
			t.Logf("aggregator container logs:\n%s", logs)
		}
		_, _ = memDockerErr("rm", "-f", "-v", id)
	})
	memWaitReady(t, id, "http://"+metrics+"/readyz", time.Minute)

	// The aggregator found the container's limit and set its soft limit.
	wantSoft := int64(memLimitB) * 85 / 100
	logs, _ := exec.Command("docker", "logs", id).CombinedOutput()
	soft := regexp.MustCompile(`"msg":"aggregator serving"[^\n]*"go_memory_limit_bytes":(\d+)`).FindSubmatch(logs)
	if soft == nil || string(soft[1]) != strconv.FormatInt(wantSoft, 10) {
		t.Errorf("no start line setting the Go soft memory limit to %d bytes (85%% of %s); logs:\n%s", wantSoft, memLimit, logs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	start := time.Now()
	load := exec.CommandContext(ctx, twbench, "ingest", "-target", listen,
		"-streams", strconv.Itoa(memStreams), "-clusters", strconv.Itoa(memStreams), "-events", strconv.Itoa(memBacklog))
	out, err := load.CombinedOutput()
	t.Logf("load: %s(%v)", out, time.Since(start).Round(time.Millisecond))
	state := memInspect(t, id)
	t.Logf("container: %s, OOMKilled %v, restarts %d; memory peak %s of %s", state.Status, state.OOMKilled, state.Restarts, memPeak(id), memLimit)
	if state.OOMKilled || state.Status != "running" {
		t.Fatalf("the aggregator did not survive the load under --memory %s: status %s, OOMKilled %v, exit code %d",
			memLimit, state.Status, state.OOMKilled, state.ExitCode)
	}
	if err != nil {
		t.Fatalf("load of %d streams with %d events each: %v", memStreams, memBacklog, err)
	}
	m := regexp.MustCompile(`acknowledged (\d+) events \((\d+) alerting\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no acknowledged count in the load's output")
	}
	acked, _ := strconv.Atoi(string(m[1]))
	alerting, _ := strconv.Atoi(string(m[2]))
	if want := memStreams * memBacklog; acked != want {
		t.Fatalf("%d events acknowledged, want every one of %d", acked, want)
	}

	// What was acknowledged is exported: every alerting event arrives.
	if !sink.WaitProgress(20*time.Second, 90*time.Second, func(recs []harness.Record) bool {
		return len(harness.ByEvent(recs, "tokenwatch.token_request")) >= alerting
	}) {
		t.Errorf("%d token_request records exported, want %d", len(harness.ByEvent(sink.Records(), "tokenwatch.token_request")), alerting)
	}

	// And it still stops cleanly (SIGTERM, 10 s).
	memDocker(t, "stop", "-t", "10", id)
	if state := memInspect(t, id); state.OOMKilled || state.ExitCode != 0 {
		t.Errorf("after docker stop: exit code %d, OOMKilled %v, want 0 and false", state.ExitCode, state.OOMKilled)
	}
}

// memRequireDocker skips, visibly, when no Docker daemon answers.
func memRequireDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("SKIP (visible): no docker CLI on this machine: the container memory test cannot run")
	}
	if v, err := memDockerErr("version", "--format", "{{.Server.Version}}"); err != nil {
		t.Skipf("SKIP (visible): no Docker daemon answers: %v", err)
	} else {
		t.Logf("Docker engine %s", v)
	}
}

// memBuildImage builds the aggregator image with the deploy kit's
// script (static binary on FROM scratch, nothing pulled) under a name of its
// own, removed at the end.
func memBuildImage(t *testing.T, root string) string {
	t.Helper()
	prefix := fmt.Sprintf("tokenwatch-e2e-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "deploy", "images", "build.sh"))
	// Only the engine's own architecture: the one this test runs.
	arch := memDocker(t, "version", "--format", "{{.Server.Arch}}")
	cmd.Env = append(os.Environ(), "IMAGES=aggregator", "IMAGE_PREFIX="+prefix, "TAG=memory", "ARCHES="+arch, "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	refs := strings.Fields(string(out)) // every reference it tagged
	t.Cleanup(func() { _, _ = memDockerErr(append([]string{"rmi"}, refs...)...) })
	if err != nil {
		t.Fatalf("deploy/images/build.sh: %v\n%s", err, stderr.Bytes())
	}
	image := prefix + "/aggregator:memory"
	if !slices.Contains(refs, image) {
		t.Fatalf("deploy/images/build.sh tagged %q, not %s", refs, image)
	}
	return image
}

// memGoBuild builds pkg of the repository at root into out, as a user would.
func memGoBuild(t *testing.T, root, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func memDockerErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func memDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := memDockerErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// memContainerState is what docker inspect says of a container's process.
type memContainerState struct {
	Status    string
	OOMKilled bool
	ExitCode  int
	Restarts  int
}

func memInspect(t *testing.T, id string) memContainerState {
	t.Helper()
	var v struct {
		State        memContainerState
		RestartCount int
	}
	if err := json.Unmarshal([]byte(memDocker(t, "inspect", "--format", "{{json .}}", id)), &v); err != nil {
		t.Fatalf("docker inspect %s: %v", id, err)
	}
	v.State.Restarts = v.RestartCount
	return v.State
}

// memWaitReady polls url until it answers 200, failing when the container
// stops or timeout passes.
func memWaitReady(t *testing.T, id, url string, timeout time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		if s := memInspect(t, id); s.Status != "running" {
			t.Fatalf("aggregator container %s before ready (exit code %d)", s.Status, s.ExitCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("aggregator not ready at %s within %v: %v", url, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// memPeak is the container's peak memory use as its cgroup recorded it
// (v1 memory.max_usage_in_bytes, v2 memory.peak), or "unknown".
func memPeak(id string) string {
	for _, p := range []string{
		"/sys/fs/cgroup/memory/docker/" + id + "/memory.max_usage_in_bytes",
		"/sys/fs/cgroup/system.slice/docker-" + id + ".scope/memory.peak",
		"/sys/fs/cgroup/docker/" + id + "/memory.peak",
	} {
		if b, err := os.ReadFile(p); err == nil {
			if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
				return fmt.Sprintf("%d MiB", n>>20)
			}
		}
	}
	return "unknown"
}
