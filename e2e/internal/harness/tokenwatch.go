package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Aggregator is a tokenwatch aggregator process with fixed ports and state
// directory, so it can be restarted as the same instance.
type Aggregator struct {
	Bin      string
	LogDir   string
	Listen   string // gRPC address agents connect to
	Metrics  string // HTTP /metrics, /readyz
	StateDir string
	OTLP     string // OTLP/gRPC endpoint ("" for the stdout default)
	Config   string // --config file, optional
	Extra    []string
	// TLS, when set, replaces --insecure.
	TLS *ServerTLS
	// Owner, when set, owns the processes (for starts from subtests).
	Owner testing.TB

	Proc *Proc
}

// ServerTLS is the aggregator's mTLS material.
type ServerTLS struct{ Cert, Key, ClientCA string }

// NewAggregator prepares an aggregator exporting to otlp on free loopback ports.
func NewAggregator(t testing.TB, bins *Binaries, logDir, otlp string) *Aggregator {
	t.Helper()
	state := filepath.Join(t.TempDir(), "aggregator-state")
	return &Aggregator{Bin: bins.Aggregator, LogDir: logDir, Listen: Addr(FreePort(t)),
		Metrics: Addr(FreePort(t)), StateDir: state, OTLP: otlp}
}

// Args returns the command line the aggregator is started with.
func (a *Aggregator) Args() []string {
	args := []string{"--listen", a.Listen, "--metrics-addr", a.Metrics, "--state-dir", a.StateDir}
	if a.TLS != nil {
		args = append(args, "--tls-cert", a.TLS.Cert, "--tls-key", a.TLS.Key, "--tls-client-ca", a.TLS.ClientCA)
	} else {
		args = append(args, "--insecure")
	}
	if a.OTLP != "" {
		args = append(args, "--otlp-endpoint", a.OTLP, "--otlp-insecure")
	}
	if a.Config != "" {
		args = append(args, "--config", a.Config)
	}
	return append(args, a.Extra...)
}

// Start starts the aggregator and waits for /readyz.
func (a *Aggregator) Start(t testing.TB) {
	t.Helper()
	a.Proc = StartOwned(t, ownerOr(a.Owner, t), a.LogDir, "aggregator", a.Bin, a.Args()...)
	if err := a.Proc.WaitHTTP("http://"+a.Metrics+"/readyz", 30*time.Second); err != nil {
		t.Fatalf("aggregator: %v", err)
	}
}

// Restart stops the aggregator with SIGTERM (graceful) and starts it again.
func (a *Aggregator) Restart(t testing.TB) {
	t.Helper()
	if err := a.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("aggregator graceful stop: %v", err)
	}
	a.Start(t)
}

// Agent is a tokenwatch agent process for one cluster and audit log.
type Agent struct {
	Bin        string
	LogDir     string
	Name       string // process name in logs
	Cluster    string
	Node       string
	AuditLog   string
	Aggregator string
	StateDir   string // "" with Once: no checkpoint
	Metrics    string
	Once       bool
	StartAt    string // beginning | end | "" (default)
	TLS        *ClientTLS
	Extra      []string
	// NetNS, when set, runs the agent inside that network namespace.
	NetNS *NetNS
	// Owner, when set, owns the processes (for starts from subtests).
	Owner testing.TB

	Proc *Proc
}

// ClientTLS is the agent's mTLS material.
type ClientTLS struct{ Cert, Key, CA string }

// Args returns the agent's command line.
func (g *Agent) Args() []string {
	args := []string{"--audit-log", g.AuditLog, "--cluster", g.Cluster, "--aggregator", g.Aggregator}
	if g.Node != "" {
		args = append(args, "--node-name", g.Node)
	}
	if g.StateDir != "" {
		args = append(args, "--state-dir", g.StateDir)
	}
	if g.Metrics != "" {
		args = append(args, "--metrics-addr", g.Metrics)
	}
	if g.Once {
		args = append(args, "--once", "--once-timeout", "2m")
	}
	if g.StartAt != "" {
		args = append(args, "--start-at", g.StartAt)
	}
	if g.TLS != nil {
		args = append(args, "--tls-cert", g.TLS.Cert, "--tls-key", g.TLS.Key, "--tls-ca", g.TLS.CA)
	} else {
		args = append(args, "--insecure")
	}
	return append(args, g.Extra...)
}

// Start starts the agent; with Metrics set it waits for /readyz.
func (g *Agent) Start(t testing.TB) {
	t.Helper()
	name := g.Name
	if name == "" {
		name = "agent-" + g.Cluster
	}
	bin, args := g.Bin, g.Args()
	if g.NetNS != nil {
		bin, args = g.NetNS.Command(bin, args...)
	}
	g.Proc = StartOwned(t, ownerOr(g.Owner, t), g.LogDir, name, bin, args...)
	if g.Metrics != "" && !g.Once && g.NetNS == nil {
		if err := g.Proc.WaitHTTP("http://"+g.Metrics+"/readyz", 30*time.Second); err != nil {
			t.Fatalf("agent: %v", err)
		}
	}
}

// RunOnce runs a --once agent to completion and fails the test unless it exits 0.
func (g *Agent) RunOnce(t testing.TB, timeout time.Duration) {
	t.Helper()
	g.Once = true
	g.Start(t)
	if err := g.Proc.Wait(timeout); err != nil {
		g.Proc.Dump(t)
		t.Fatalf("agent --once: %v", err)
	}
}

// WriteFile writes content to a new file in dir and returns its path.
func WriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	return p
}

// Need fails the test when the binaries did not build: tests that need the
// product never skip for that.
func Need(t testing.TB, bins *Binaries, err error) *Binaries {
	t.Helper()
	if err != nil {
		t.Fatalf("tokenwatch binaries did not build: %v", err)
	}
	if bins == nil {
		t.Fatal("tokenwatch binaries were not built (TestMain did not run harness.Build)")
	}
	return bins
}

// String formats expected-vs-received for scenario logs.
func Counts(scenario string, want, got int) string {
	return fmt.Sprintf("scenario %s: expected %d, received %d", scenario, want, got)
}

// GoleakOptions ignores the goroutines that the collector's receiver and
// gRPC keep at package level after a clean shutdown, and lumberjack's
// compression goroutine, which v2.2.1's Close does not stop (as in
// kube-apiserver).
func GoleakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	}
}

func ownerOr(owner, t testing.TB) testing.TB {
	if owner != nil {
		return owner
	}
	return t
}
