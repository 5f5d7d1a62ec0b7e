package server

import (
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/version"
)

// TestRegistryBuildInfo: /metrics carries tokenwatch_build_info for the
// aggregator, as the agent's does.
func TestRegistryBuildInfo(t *testing.T) {
	mfs, err := newRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tokenwatch_build_info" {
			continue
		}
		got := map[string]string{}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if got["program"] != "aggregator" || got["version"] != version.Version || got["revision"] != version.Commit() {
			t.Errorf("tokenwatch_build_info labels = %v, want program aggregator, version %s, revision %s", got, version.Version, version.Commit())
		}
		return
	}
	t.Error("registry lacks tokenwatch_build_info")
}
