package version

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestString(t *testing.T) {
	got := String("agent")
	want := "tokenwatch agent " + Version + " (commit " + Commit() + ", " + runtime.Version() + ")"
	if got != want {
		t.Errorf("String(%q) = %q, want %q", "agent", got, want)
	}
	if Commit() == "" {
		t.Error("Commit() is empty, want a revision or \"unknown\"")
	}
}

func TestNewCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector("aggregator"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "tokenwatch_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v, want one tokenwatch_build_info sample", mfs)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	for name, want := range map[string]string{
		"program": "aggregator", "version": Version, "revision": Commit(), "goversion": runtime.Version(),
	} {
		if labels[name] != want {
			t.Errorf("tokenwatch_build_info label %s = %q, want %q", name, labels[name], want)
		}
	}
	if m.GetGauge().GetValue() != 1 {
		t.Errorf("tokenwatch_build_info = %v, want 1", m.GetGauge().GetValue())
	}
}
