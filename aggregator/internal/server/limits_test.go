package server

import (
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestGuardConfigDefaultsAgree(t *testing.T) {
	got := config.DefaultLimits().Config
	if diff := cmp.Diff(guard.DefaultConfig(), got); diff != "" {
		t.Errorf("config.DefaultLimits().Config differs from guard.DefaultConfig() (-want +got):\n%s", diff)
	}
}

// TestLimitsFromConfigFile checks that the file's limits section reaches the
// gRPC server, and that a reload changing it says it waits for a restart.
func TestLimitsFromConfigFile(t *testing.T) {
	s := newSetup(t)
	s.configFile = filepath.Join(t.TempDir(), "aggregator.yaml")
	writeConfig(t, s.configFile, "limits:\n  max_events_per_batch: 2\n  event_burst: 2\n")
	agg := s.start(t)

	a := dial(t, agg.addr, "prod", "cp-1", false)
	ev := func(id string) *tokenwatchv1.TokenEvent {
		return event("bob", id, audit.StageResponseComplete, 201, "team-a", "builder", "10.1.2.3")
	}
	a.send(t, []*tokenwatchv1.TokenEvent{ev("l1"), ev("l2")})

	b := dial(t, agg.addr, "prod", "cp-2", false)
	b.seq++
	if err := b.st.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{
		Seq: b.seq, Events: []*tokenwatchv1.TokenEvent{ev("l3"), ev("l4"), ev("l5")},
	}}}); err != nil {
		t.Fatalf("send: %v", err)
	}
	_, err := b.recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("batch of 3 with limits.max_events_per_batch 2: err = %v, want ResourceExhausted", err)
	}

	writeConfig(t, s.configFile, "limits:\n  max_events_per_batch: 3\n  event_burst: 3\n")
	agg.logs.waitLog(t, "config reload: limits changed", 1)
}
