package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/agent/internal/uses"
)

// TestLineageMetrics: the lineage figures are exposed under
// tokenwatch_agent_lineage_*.
func TestLineageMetrics(t *testing.T) {
	a := New(Sources{
		Send: func() sender.Stats { return sender.Stats{UsesSent: 6} },
		Lineage: func() uses.Stats {
			return uses.Stats{TokenWatches: 10, ActorUserWatches: 2, UsesSent: 5, UsesCounted: 40,
				LookbackEntries: 300, LookbackBytes: 4096, LookbackRescanned: 8192, LookbackHits: 3, LookbackMisses: 1}
		},
	})
	want := `# HELP tokenwatch_agent_lineage_watches Lineage watches held, by kind (token, actor_user, actor_credential).
# TYPE tokenwatch_agent_lineage_watches gauge
tokenwatch_agent_lineage_watches{kind="actor_credential"} 0
tokenwatch_agent_lineage_watches{kind="actor_user"} 2
tokenwatch_agent_lineage_watches{kind="token"} 10
# HELP tokenwatch_agent_lineage_uses_sent_total Lineage uses sent one by one, re-sends included.
# TYPE tokenwatch_agent_lineage_uses_sent_total counter
tokenwatch_agent_lineage_uses_sent_total 6
# HELP tokenwatch_agent_lineage_uses_counted_total Lineage requests only counted: further uses of watched tokens, legacy-token requests.
# TYPE tokenwatch_agent_lineage_uses_counted_total counter
tokenwatch_agent_lineage_uses_counted_total 40
# HELP tokenwatch_agent_lineage_lookback_entries Blocks of log held in the lookback index.
# TYPE tokenwatch_agent_lineage_lookback_entries gauge
tokenwatch_agent_lineage_lookback_entries 300
# HELP tokenwatch_agent_lineage_lookback_hits_total Lines read again for a new watch that matched it.
# TYPE tokenwatch_agent_lineage_lookback_hits_total counter
tokenwatch_agent_lineage_lookback_hits_total 3
# HELP tokenwatch_agent_lineage_lookback_misses_total Lookback blocks a new watch may match that could not be read again (reported as lost).
# TYPE tokenwatch_agent_lineage_lookback_misses_total counter
tokenwatch_agent_lineage_lookback_misses_total 1
# HELP tokenwatch_agent_lineage_lookback_bytes Bytes of log the lookback index covers.
# TYPE tokenwatch_agent_lineage_lookback_bytes gauge
tokenwatch_agent_lineage_lookback_bytes 4096
# HELP tokenwatch_agent_lineage_lookback_rescanned_bytes_total Bytes of log read again for new watches.
# TYPE tokenwatch_agent_lineage_lookback_rescanned_bytes_total counter
tokenwatch_agent_lineage_lookback_rescanned_bytes_total 8192
`
	mfs, err := a.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "tokenwatch_agent_lineage_") {
			continue
		}
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("no line %q in the scrape:\n%s", line, b.String())
		}
	}
}
