package main

import (
	"bytes"
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

func TestLineageLines(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	jti := benchJTI(0, 3)
	mint, err := audit.Decode(mintLine("m-1", 1003, jti, at))
	if err != nil {
		t.Fatal(err)
	}
	if !mint.IsTokenCreate() || mint.Annotations["authentication.kubernetes.io/issued-credential-id"] != "JTI="+jti {
		t.Errorf("mintLine decodes to %+v, want a token create issuing JTI=%s", mint, jti)
	}
	tests := []struct {
		name    string
		code    int
		secrets bool
		verb    string
	}{{"get", 200, false, "get"}, {"denied list", 403, true, "list"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := audit.Decode(useLine("u-1", 1003, jti, useIP(70000), tt.code, tt.secrets, at))
			if err != nil {
				t.Fatal(err)
			}
			if ev.IsTokenCreate() || ev.Verb != tt.verb || ev.Stage != "ResponseComplete" || ev.SourceIP() != "10.2.17.112" ||
				ev.User.Username != "system:serviceaccount:team-a:sa-1003" ||
				len(ev.User.Extra["authentication.kubernetes.io/credential-id"]) != 1 ||
				ev.User.Extra["authentication.kubernetes.io/credential-id"][0] != "JTI="+jti {
				t.Errorf("useLine decodes to %+v, want a %s with JTI=%s from 10.2.17.112", ev, tt.verb, jti)
			}
		})
	}
}

func TestFloodPhases(t *testing.T) {
	s := time.Second
	tests := []struct {
		el        time.Duration
		wantPhase string
		wantOn    time.Duration
	}{
		{0, "calm", 0}, {4 * s, "calm", 0}, {5 * s, "flood", 0}, {7 * s, "flood", 2 * s},
		{10 * s, "calm", 5 * s}, {14 * s, "calm", 5 * s}, {16 * s, "flood", 6 * s},
	}
	m := &floodMix{}
	for _, tt := range tests {
		if got := m.phase(tt.el); got != tt.wantPhase {
			t.Errorf("phase(%v) = %q, want %q", tt.el, got, tt.wantPhase)
		}
		if got := floodTime(tt.el); got != tt.wantOn {
			t.Errorf("floodTime(%v) = %v, want %v", tt.el, got, tt.wantOn)
		}
	}
}

func TestUsesMixNewTokenAndIP(t *testing.T) {
	m := &usesMix{rate: 50, jtis: []string{benchJTI(0, 0), benchJTI(0, 1), benchJTI(0, 2)}}
	var chunk bytes.Buffer
	ids := m.add(&chunk, time.Second, time.Now())
	if len(ids) != 50 || ids[0] != "use-0" || ids[49] != "use-49" {
		t.Fatalf("add(1s) ids = %d (%v ...), want use-0..use-49", len(ids), ids[:min(2, len(ids))])
	}
	ips := map[string]bool{}
	toks := map[string]int{}
	for l := range bytes.Lines(chunk.Bytes()) {
		ev, err := audit.Decode(l)
		if err != nil {
			t.Fatal(err)
		}
		ips[ev.SourceIP()] = true
		toks[ev.User.Extra["authentication.kubernetes.io/credential-id"][0]]++
	}
	if len(ips) != 50 || len(toks) != 3 || toks["JTI="+benchJTI(0, 0)] != usesPerToken {
		t.Errorf("uses: %d IPs, tokens %v, want 50 IPs and %d uses of each token in turn", len(ips), toks, usesPerToken)
	}
	if ids := m.add(&chunk, 2*time.Second, time.Now()); len(ids) != 10 {
		t.Errorf("add(2s) after the tokens ran out = %d ids, want 10", len(ids))
	}
}
