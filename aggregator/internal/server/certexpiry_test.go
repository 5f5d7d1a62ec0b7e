package server

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

func TestCertExpiry(t *testing.T) {
	dir := t.TempDir()
	_, files, err := devca.WriteSet(dir, devca.Set{Clusters: []string{"prod"}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCertExpiry(files.ServerCert, files.CA))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	for label, file := range map[string]string{"server": files.ServerCert, "client_ca": files.CA} {
		want, err := tlsconf.NotAfter(file)
		if err != nil {
			t.Fatal(err)
		}
		if got[label] != float64(want.UnixNano())/1e9 {
			t.Errorf("expiry{certificate=%q} = %v, want %v", label, got[label], float64(want.Unix()))
		}
	}
}
