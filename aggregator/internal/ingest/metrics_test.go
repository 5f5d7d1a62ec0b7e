package ingest

import (
	"maps"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// TestConnectedNodes: the gauge counts live nodes per cluster and names no
// cluster without one.
func TestConnectedNodes(t *testing.T) {
	n := &nodes{}
	reg := prometheus.NewRegistry()
	reg.MustRegister(connectedNodes{n: n})
	gather := func() map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				got[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
		return got
	}
	if got := gather(); len(got) != 0 {
		t.Errorf("no stream: %v, want no series", got)
	}
	n.live = map[detect.Source]*claim{
		{Cluster: "prod-1", Node: "cp-1"}: {session: "a", streams: 1},
		{Cluster: "prod-1", Node: "cp-2"}: {session: "b", streams: 2},
		{Cluster: "edge-1", Node: "cp-1"}: {session: "c", streams: 1},
	}
	want := map[string]float64{
		"tokenwatch_aggregator_connected_nodes/edge-1": 1,
		"tokenwatch_aggregator_connected_nodes/prod-1": 2,
	}
	if got := gather(); !maps.Equal(got, want) {
		t.Errorf("gathered %v, want %v", got, want)
	}
}
