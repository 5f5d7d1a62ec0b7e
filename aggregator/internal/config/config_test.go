package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/budget"
	"github.com/tokenwatch/tokenwatch/internal/correlate"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/silence"
)

func TestParseGood(t *testing.T) {
	full := Config{
		Exclusions: rule.Config{
			StrictGroups:    false,
			Platform:        rule.PlatformAny,
			ReplaceDefaults: true,
			Add: []rule.Pattern{
				{User: "system:serviceaccount:vault:vault", Namespaces: []string{"team-*"}, ServiceAccounts: []string{"*"}},
				{User: "ci-bot"},
			},
		},
		Alerting:    Alerting{StageGrace: 1500 * time.Millisecond, DedupeRetention: 48 * time.Hour},
		Correlation: correlate.Config{Window: 15 * time.Minute, Lateness: 0, Clusters: 3, ServiceAccounts: 10, IgnoreUsers: []string{"breakglass"}},
		Budget:      budget.Config{MaxAlerts: 100, Window: time.Minute},
		Silence:     silence.Config{After: 2 * time.Minute, ForgetAfter: time.Hour, ExpectedNodes: map[string]int{"prod": 3, "staging": 1}},
		Limits:      DefaultLimits(),
		Lineage: lineage.Config{
			Enabled: false, DefaultTokenTTL: 30 * time.Minute, MaxTokenTTL: 12 * time.Hour,
			Lookback: time.Minute, ActorWindow: 5 * time.Minute, SummaryInterval: time.Minute, MaxWatched: 500,
		},
	}
	limits := Default()
	// The guard's fields that are not in the file keep their defaults.
	gc := guard.DefaultConfig()
	gc.MaxRecvMsgBytes, gc.MaxEventsPerBatch, gc.MaxLossesPerBatch = 8<<20, 2048, 512
	gc.MaxStreams, gc.MaxStreamsPerCluster, gc.MaxStreamsPerConn = 4096, 64, 4
	gc.HelloTimeout, gc.MaxHealthWatches = 3*time.Second, 16
	gc.EventsPerSecond, gc.EventBurst, gc.MessagesPerSecond, gc.MessageBurst = 500000, 1000000, 5000, 10000
	gc.ReplayEventsPerSecond, gc.ReplayEventBurst = 1000000, 2000000
	gc.MaxThrottle, gc.KeepaliveMinTime, gc.WindowBytes = 2*time.Second, 5*time.Second, 256<<10
	limits.Limits = Limits{
		Config:             gc,
		MaxNodesPerCluster: 8,
		MaxBufferedBytes:   64 << 20, // not in the file: the default
	}
	partial := Default()
	partial.Correlation.Clusters = 4
	example := Default()
	example.Exclusions.Add = []rule.Pattern{{User: "system:serviceaccount:vault:vault", Namespaces: []string{"team-*"}, ServiceAccounts: []string{"*"}}}
	example.Correlation.IgnoreUsers = []string{}

	tests := []struct {
		file string
		want Config
	}{
		{"testdata/empty.good.yaml", Default()},
		{"testdata/full.good.yaml", full},
		{"testdata/partial.good.yaml", partial},
		{"testdata/limits.good.yaml", limits},
		{"../../../deploy/config/aggregator.yaml", example},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			got, err := Load(tt.file)
			if err != nil {
				t.Fatalf("Load(%q) error: %v", tt.file, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Load(%q) mismatch (-want +got):\n%s", tt.file, diff)
			}
		})
	}
}

func TestParseBad(t *testing.T) {
	tests := []struct {
		file string
		want string // substring of the error: the field it names
	}{
		{"unknown-key.bad.yaml", "field strict_group not found"},
		{"unknown-section.bad.yaml", "field alerts not found"},
		{"platform.bad.yaml", `exclusions.platform: must be "self-managed" or "any", got "eks"`},
		{"window.bad.yaml", "correlation.window: must be > 0"},
		{"duration-int.bad.yaml", "time.Duration"},
		{"duration-syntax.bad.yaml", "time.Duration"},
		{"add-user.bad.yaml", "exclusions.add[0].user: must not be empty"},
		{"budget.bad.yaml", "budget.max_alerts: must be >= 0"},
		{"clusters.bad.yaml", "correlation.clusters: must be >= 2"},
		{"grace.bad.yaml", "alerting.stage_grace: must be > 0"},
		{"two-docs.bad.yaml", "more than one YAML document"},
		{"limits-burst.bad.yaml", "limits.event_burst: must be >= limits.max_events_per_batch (4096)"},
		{"limits-zero.bad.yaml", "limits.events_per_second: must be > 0"},
		{"limits-streams.bad.yaml", "limits.max_streams_per_cluster: must be <= limits.max_streams (10)"},
		{"limits-negative.bad.yaml", "limits.keepalive_min_time: must be > 0"},
		{"limits-window.bad.yaml", "limits.window_bytes: must be 0"},
		{"limits-hello.bad.yaml", "limits.hello_timeout: must be > 0"},
		{"limits-nodes.bad.yaml", "limits.max_nodes_per_cluster: must be > 0"},
		{"silence-forget.bad.yaml", "silence.forget_after: must be > 0"},
		{"silence-tokens.bad.yaml", "silence.token_requests_after: must be >= 0 (0 turns the check off)"},
		{"silence-expected.bad.yaml", "silence.expected_nodes.prod: must be >= 1, got 0; silence.expected_nodes.staging: 20 exceeds limits.max_nodes_per_cluster (16)"},
		{"type.bad.yaml", "cannot unmarshal"},
		{"lineage.bad.yaml", "lineage.max_token_ttl: must be > 0; lineage.max_watched: must be >= 1"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			_, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%q) = nil error, want one containing %q", path, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load(%q) error = %q, want it to contain %q", path, err, tt.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("Load(%q) error = %q, want it to name the file", path, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("Load(%q) error spans lines: %q", path, err)
			}
		})
	}
}

// TestTestdataCovered makes sure every *.good.yaml loads and every *.bad.yaml
// fails, so that a new fixture cannot be silently ignored.
func TestTestdataCovered(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no fixtures in testdata")
	}
	for _, f := range files {
		_, err := Load(f)
		switch {
		case strings.HasSuffix(f, ".good.yaml") && err != nil:
			t.Errorf("Load(%q) error: %v", f, err)
		case strings.HasSuffix(f, ".bad.yaml") && err == nil:
			t.Errorf("Load(%q) = nil error, want one", f)
		case !strings.HasSuffix(f, ".good.yaml") && !strings.HasSuffix(f, ".bad.yaml"):
			t.Errorf("fixture %q is neither .good.yaml nor .bad.yaml", f)
		}
	}
}

func TestValidateReportsEveryField(t *testing.T) {
	c := Default()
	c.Correlation.Window = 0
	c.Silence.After = 0
	c.Budget.Window = -time.Second
	c.Lineage.SummaryInterval = 0
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil, want an error")
	}
	for _, field := range []string{"correlation.window", "silence.after", "budget.window", "lineage.summary_interval"} {
		if !strings.Contains(err.Error(), field+":") {
			t.Errorf("Validate() = %q, want it to name %s", err, field)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v, want nil", err)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("Load(missing) = %v, want a not-exist error", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("Parse accepted a config that Validate rejects: %v", err)
		}
	})
}
