package ingest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRefusalsLoggedOncePerReason: every refused stream is counted, and
// each reason is logged, with the peer's address, at most once a minute.
func TestRefusalsLoggedOncePerReason(t *testing.T) {
	var logs lockedBuffer
	srv := New(Options{Processor: &recorder{}, Insecure: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	h := start(t, srv, nil, insecure.NewCredentials())
	for i := 0; i < 3; i++ {
		for _, msgs := range [][]*tokenwatchv1.StreamRequest{
			{batchMsg(1, "a1")},        // no_hello
			{hello("", "cp-1", false)}, // no_cluster
			{hello("prod", "cp-1", false), hello("prod", "cp-1", false)}, // second_hello
		} {
			st := h.stream(t)
			send(t, st, msgs...)
			if code := recvErr(t, st); code != codes.InvalidArgument {
				t.Fatalf("stream ended with %v, want InvalidArgument", code)
			}
		}
	}
	for _, reason := range []string{"no_hello", "no_cluster", "second_hello"} {
		if n := counter(t, srv, reason); n != 3 {
			t.Errorf("refused{%s} = %v, want 3", reason, n)
		}
		if n := strings.Count(logs.String(), "reason="+reason+" "); n != 1 {
			t.Errorf("log lines for %s: %d, want 1; log:\n%s", reason, n, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "remote=127.0.0.1:") {
		t.Errorf("refusal log does not name the peer:\n%s", logs.String())
	}
}
