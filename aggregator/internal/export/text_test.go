package export

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// textRecords covers every kind of record, and fields an attacker controls.
func textRecords() []alert.Record {
	t0 := time.Date(2026, 12, 6, 10, 0, 1, 500_000_000, time.UTC)
	tr := func(user, ns, name, outcome string, extra ...alert.Attr) alert.Record {
		return alert.Record{
			EventName: alert.EventTokenRequest, Time: t0, Severity: alert.Medium,
			Body: user + " minted a token.",
			Attrs: append([]alert.Attr{
				alert.String("k8s.cluster.name", "prod"),
				alert.String("user.name", user),
				alert.String("kubernetes.audit.objectRef.namespace", ns),
				alert.String("kubernetes.audit.objectRef.name", name),
				alert.String("source.ip", "192.0.2.7"),
				alert.String("event.outcome", outcome),
			}, extra...),
		}
	}
	return []alert.Record{
		tr("alice", "team-b", "deployer", "success"),
		tr("bob", "kube-system", "admin", "failure"),
		tr("system:node:cp-1", "team-a", "app", "success",
			alert.String("kubernetes.audit.impersonatedUser.username", "carol"),
			alert.Bool("tokenwatch.dry_run", true),
			alert.String("tokenwatch.exclusion.mismatch", "system:node: name without the system:nodes group")),
		tr("evil\x1b[2J\nuser", "ns with space", "x", "unknown"),
		tr("", "", "", ""),
		{
			EventName: alert.EventCorrelation, Time: t0.Add(time.Minute), Severity: alert.High,
			Body: "alice minted tokens in 2 clusters (prod, staging) within 10m0s.",
			Attrs: []alert.Attr{
				alert.String("tokenwatch.correlation.kind", "multi_cluster_actor"),
				alert.String("user.name", "alice"),
				alert.Strings("k8s.cluster.names", []string{"prod", "staging"}),
				alert.Strings("tokenwatch.service_accounts", []string{"prod/a/b", "staging/a/b"}),
				alert.Int("tokenwatch.correlation.distinct", 2),
			},
		},
		{
			EventName: alert.EventCorrelation, Time: t0.Add(time.Minute), Severity: alert.High,
			Body: "192.0.2.7 minted tokens in 2 clusters (prod, staging) within 10m0s.",
			Attrs: []alert.Attr{
				alert.String("tokenwatch.correlation.kind", "multi_cluster_source"),
				alert.String("source.ip", "192.0.2.7"),
				alert.Strings("k8s.cluster.names", []string{"prod", "staging"}),
				alert.Strings("tokenwatch.service_accounts", []string{"prod/a/b", "staging/a/b"}),
				alert.Int("tokenwatch.correlation.distinct", 2),
			},
		},
		{
			EventName: alert.EventPipeline, Time: t0.Add(2 * time.Minute), Severity: alert.High,
			Body: "Node cp-1 of cluster prod is silent: no heartbeat from its agent for 5m0s.",
			Attrs: []alert.Attr{
				alert.String("tokenwatch.pipeline.kind", "cluster_silent"),
				alert.String("k8s.cluster.name", "prod"),
				alert.String("k8s.node.name", "cp-1"),
			},
		},
		{
			EventName: alert.EventPipeline, Time: t0.Add(3 * time.Minute), Severity: alert.Low,
			Body: "Alert budget of 10 per 5m0s exceeded: 3 token request alerts held back (alice=3).",
			Attrs: []alert.Attr{
				alert.String("tokenwatch.pipeline.kind", "alerts_suppressed"),
				alert.Int("tokenwatch.suppressed.count", 3),
			},
		},
	}
}

func TestTextGolden(t *testing.T) {
	var buf bytes.Buffer
	x := NewText(&buf)
	recs := textRecords()
	// Two exports: the header comes once, before the first record.
	if err := x.Export(context.Background(), recs[:2]); err != nil {
		t.Fatal(err)
	}
	if err := x.Export(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if err := x.Export(context.Background(), recs[2:]); err != nil {
		t.Fatal(err)
	}
	if err := x.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := buf.Bytes()
	golden := filepath.Join("testdata", "text.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("text output differs from %s (run with -update after checking):\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
	lines := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n")
	if len(lines) != len(recs)+1 {
		t.Errorf("got %d lines, want a header and %d records", len(lines), len(recs))
	}
	for i, l := range lines {
		for _, c := range l {
			if c < 0x20 || c == 0x7f {
				t.Errorf("line %d holds control character %q: %q", i, c, l)
			}
		}
	}
}

func TestValidateOutput(t *testing.T) {
	tests := []struct {
		give    string
		wantErr bool
	}{
		{OutputOTLPJSON, false},
		{OutputText, false},
		{"", true},
		{"json", true},
		{"TEXT", true},
	}
	for _, tt := range tests {
		if err := ValidateOutput(tt.give); (err != nil) != tt.wantErr {
			t.Errorf("ValidateOutput(%q) = %v, want error %v", tt.give, err, tt.wantErr)
		}
	}
}
