package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// syncBuffer is a log sink safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// eventually retries cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %s", what, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (a *aggregator) lastBeat() *tokenwatchv1.Heartbeat {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.beats) == 0 {
		return nil
	}
	return a.beats[len(a.beats)-1]
}

// TestAuditLogAbsent: an agent whose audit log does not exist is not
// ready, says so in its log (again while it lasts), in a gauge and in its
// heartbeats; once the file appears it is read and the agent is ready.
func TestAuditLogAbsent(t *testing.T) {
	defer func(c, w time.Duration) { auditLogCheckEvery, auditLogWarnEvery = c, w }(auditLogCheckEvery, auditLogWarnEvery)
	auditLogCheckEvery, auditLogWarnEvery = 20*time.Millisecond, 200*time.Millisecond

	dir := filepath.Join(t.TempDir(), "missing")
	logPath := filepath.Join(dir, "audit.log")
	agg, addr := newAggregator(t, false)
	// Heartbeats often: the first can leave before the follower has looked
	// at the file, and the default 10 s would outlast eventually's wait.
	agg.beatMs = 20
	cfg := config(logPath, addr, "")
	cfg.MetricsAddr = freeAddr(t)
	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run after stop = %v, want nil", err)
		}
	}()
	base := "http://" + cfg.MetricsAddr

	eventually(t, "heartbeat file state", func() (bool, string) {
		h := agg.lastBeat()
		return h.GetFileState() == tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_ABSENT && h.GetFileError() != "", h.String()
	})
	eventually(t, "/readyz while absent", func() (bool, string) {
		code, body := httpGet(base + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "absent"), body
	})
	eventually(t, "gauge", func() (bool, string) {
		_, body := httpGet(base + "/metrics")
		return strings.Contains(body, `tokenwatch_agent_audit_log_state{state="absent"} 1`+"\n") &&
			strings.Contains(body, `tokenwatch_agent_audit_log_state{state="present"} 0`+"\n"), body
	})
	eventually(t, "repeated warning", func() (bool, string) {
		return strings.Count(logs.String(), "audit log not readable") >= 2, logs.String()
	})

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	appendFile(t, logPath, tokenLine("a1"))
	agg.waitEvents(t, 1)
	eventually(t, "/readyz once present", func() (bool, string) {
		code, body := httpGet(base + "/readyz")
		return code == http.StatusOK, body
	})
	eventually(t, "heartbeat once present", func() (bool, string) {
		h := agg.lastBeat()
		return h.GetFileState() == tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_PRESENT && h.GetLastGrowth() != nil, h.String()
	})
	// The watch looks at the file every auditLogCheckEvery: its line can
	// come after the heartbeat and /readyz have seen the file.
	eventually(t, "'readable again' line", func() (bool, string) {
		return strings.Contains(logs.String(), "audit log readable again"), logs.String()
	})
}
