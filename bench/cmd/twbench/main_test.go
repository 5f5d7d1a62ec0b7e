package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func TestAlertLineIsAnAlertingTokenCreate(t *testing.T) {
	ev, err := audit.Decode(alertLine("id-1", 7, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))
	if err != nil {
		t.Fatal(err)
	}
	if !ev.IsTokenCreate() || ev.AuditID != "id-1" || ev.User.Username != "bench-attacker" ||
		ev.ObjectRef.Name != "sa-7" || ev.RequestReceivedTimestamp != "2026-01-02T03:04:05.000000Z" {
		t.Errorf("alertLine decodes to %+v, want a token create of sa-7 by bench-attacker", ev)
	}
}

func TestPct(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i))
	}
	tests := []struct {
		p    int
		want time.Duration
	}{{50, 100}, {99, 198}, {100, 200}, {1, 2}}
	for _, tt := range tests {
		if got := pct(ds, tt.p); got != tt.want {
			t.Errorf("pct(1..200, %d) = %d, want %d", tt.p, got, tt.want)
		}
	}
	if got := pct([]time.Duration{5}, 99); got != 5 {
		t.Errorf("pct of one = %d, want 5", got)
	}
}

func TestSumMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "# HELP otelcol_receiver_accepted_log_records_total x\n"+
			"otelcol_receiver_accepted_log_records_total{receiver=\"filelog\",transport=\"\"} 1.5e+06\n"+
			"otelcol_receiver_accepted_log_records_total{receiver=\"other\"} 10\n"+
			"otelcol_receiver_refused_log_records_total{receiver=\"filelog\"} 99\n")
	}))
	defer srv.Close()
	got, err := sumMetric(context.Background(), srv.URL, "otelcol_receiver_accepted_log_records")
	if err != nil || got != 1500010 {
		t.Errorf("sumMetric = %d, %v, want 1500010", got, err)
	}
}

func TestLogField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	log := `{"level":"INFO","msg":"agent starting"}` + "\nnot json\n" +
		`{"level":"INFO","msg":"agent stopped","events_sent":4991,"losses":0}` + "\n"
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := logField(path, "agent stopped", "events_sent"); got != 4991 {
		t.Errorf("logField(events_sent) = %d, want 4991", got)
	}
	if got := logField(path, "agent stopped", "missing"); got != -1 {
		t.Errorf("logField(missing) = %d, want -1", got)
	}
}
