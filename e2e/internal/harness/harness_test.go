package harness

import (
	"context"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/plog/plogotlp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, GoleakOptions()...)
}

func send(t *testing.T, endpoint, eventName string) error {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	defer conn.Close()
	ld := plog.NewLogs()
	rl := ld.ResourceLogs().AppendEmpty()
	rl.Resource().Attributes().PutStr("service.name", "test")
	lr := rl.ScopeLogs().AppendEmpty().LogRecords().AppendEmpty()
	lr.SetEventName(eventName)
	lr.Attributes().PutStr("user.name", "mallory")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = plogotlp.NewGRPCClient(conn).Export(ctx, plogotlp.NewExportRequestFromLogs(ld))
	return err
}

func TestSinkRecordsAcrossRestart(t *testing.T) {
	s := StartSink(t)
	if err := send(t, s.Endpoint, "first"); err != nil {
		t.Fatalf("export to running sink: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := send(t, s.Endpoint, "lost"); err == nil {
		t.Fatalf("export to stopped sink succeeded, want an error")
	}
	if err := s.Start(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if err := send(t, s.Endpoint, "second"); err != nil {
		t.Fatalf("export after restart: %v", err)
	}
	ok := s.WaitFor(5*time.Second, func(r []Record) bool { return len(r) == 2 })
	recs := s.Records()
	if !ok || recs[0].EventName != "first" || recs[1].EventName != "second" {
		t.Fatalf("records = %+v, want first and second", recs)
	}
	if got := recs[1].Str("user.name"); got != "mallory" {
		t.Errorf("user.name = %q, want mallory", got)
	}
	if got := recs[0].Resource["service.name"]; got != "test" {
		t.Errorf("service.name = %v, want test", got)
	}
}

func TestProcCapturesOutputAndStops(t *testing.T) {
	dir := t.TempDir()
	p := Start(t, dir, "sh", "/bin/sh", "-c", `echo ready >&2; echo out; trap 'exit 0' TERM; while :; do sleep 0.05; done`)
	if err := p.WaitStderr("ready", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out, _ := os.ReadFile(p.Stdout)
	if string(out) != "out\n" {
		t.Errorf("stdout = %q, want %q", out, "out\n")
	}
	if p.ExitCode() != 0 {
		t.Errorf("exit code = %d, want 0", p.ExitCode())
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root + "/go.mod"); err != nil {
		t.Fatalf("repo root %s has no go.mod: %v", root, err)
	}
}
