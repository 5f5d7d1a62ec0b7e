package sender

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// refuser refuses every stream with code.
type refuser struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	code codes.Code
}

func (r refuser) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return status.Error(r.code, "refused by the test")
}

type logLines struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records decodes the JSON log lines.
func (l *logLines) records(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(l.b.Bytes()))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestRefusalBacksOffToMax: a refusal no retry can heal is logged once per
// attempt, as an error naming its class, and every retry waits at the
// maximum backoff instead of growing to it; a transient failure keeps the
// growing backoff.
func TestRefusalBacksOffToMax(t *testing.T) {
	tests := []struct {
		code      codes.Code
		wantClass string
		wantLevel string
	}{
		{codes.PermissionDenied, ClassRefused, "ERROR"},
		{codes.Unauthenticated, ClassRefused, "ERROR"},
		{codes.Unavailable, ClassStreamEnded, "WARN"},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			addr, _ := serveWith(t, refuser{code: tt.code})
			var logs logLines
			s := newSender(t, addr, &recorder{}, func(c *Config) {
				c.BackoffMin = time.Millisecond
				c.BackoffMax = 400 * time.Millisecond
				c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			})
			ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond)
			defer cancel()
			if err := s.Run(ctx); err == nil {
				t.Fatal("Run = nil, want the context's error")
			}
			recs := logs.records(t)
			if len(recs) == 0 {
				t.Fatal("no attempt logged")
			}
			for _, r := range recs {
				if r["class"] != tt.wantClass || r["level"] != tt.wantLevel {
					t.Errorf("logged %v %v %q, want class %s at %s", r["level"], r["class"], r["msg"], tt.wantClass, tt.wantLevel)
				}
				wait, err := time.ParseDuration(r["retry_in"].(string))
				if err != nil {
					t.Fatal(err)
				}
				if permanent := tt.wantClass == ClassRefused; permanent != (wait >= 200*time.Millisecond) {
					t.Errorf("retry_in = %v after a %v refusal, want at least half the maximum only for refusals", wait, tt.code)
				}
				break // the first attempt shows the backoff choice
			}
			if tt.wantClass == ClassRefused && len(recs) > 4 {
				t.Errorf("%d attempts in 900ms at a 400ms maximum backoff", len(recs))
			}
		})
	}
}
