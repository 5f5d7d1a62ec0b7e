package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// TestMain lets the test binary act as the agent in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("TOKENWATCH_AGENT_CHILD") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// acker acknowledges every batch and signals the first event.
type acker struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	got chan string
}

func (a *acker) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: &tokenwatchv1.Welcome{}}}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if b := req.GetBatch(); b != nil {
			for _, e := range b.Events {
				select {
				case a.got <- e.AuditId:
				default:
				}
			}
			if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}}); err != nil {
				return err
			}
		}
	}
}

// TestStopOnSIGTERM runs the agent as a process, waits until it has
// delivered an event, sends SIGTERM and expects a clean exit (code 0,
// checkpoint written) within the contract's 10 s.
func TestStopOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	line := `{"auditID":"a1","verb":"create","user":{"username":"alice"},"objectRef":{"resource":"serviceaccounts","namespace":"ns","name":"sa","subresource":"token"}}` + "\n"
	if err := os.WriteFile(logPath, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &acker{got: make(chan string, 1)}
	srv := grpc.NewServer()
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, a)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	defer func() {
		srv.Stop()
		<-served
	}()

	state := filepath.Join(dir, "state")
	cmd := exec.Command(os.Args[0], "--audit-log", logPath, "--cluster", "prod", "--node-name", "cp-1",
		"--aggregator", lis.Addr().String(), "--insecure", "--state-dir", state, "--start-at", "beginning")
	cmd.Env = append(os.Environ(), "TOKENWATCH_AGENT_CHILD=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case id := <-a.got:
		if id != "a1" {
			t.Errorf("event %q, want a1", id)
		}
	case err := <-exited:
		t.Fatalf("agent exited early: %v\n%s", err, stderr.String())
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("no event delivered\n%s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("agent still running 10 s after SIGTERM\n%s", stderr.String())
	}
	entries, err := os.ReadDir(state)
	if err != nil || len(entries) == 0 {
		t.Errorf("no checkpoint in %s after a clean stop (%v)\n%s", state, err, stderr.String())
	}
	if bytes.Contains(stderr.Bytes(), []byte(`"username":"alice"`)) {
		t.Error("the agent logged a raw audit line")
	}
}
