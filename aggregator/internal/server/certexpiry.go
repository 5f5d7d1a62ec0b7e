package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

// certExpiry exports when the certificates the aggregator holds expire,
// read from their files at each scrape (the files are re-read at each
// handshake too): tokenwatch_aggregator_certificate_expiry_timestamp_seconds
// {certificate="server"|"client_ca"}, the earliest NotAfter of each file. A
// file that cannot be read has no sample.
type certExpiry struct {
	desc  *prometheus.Desc
	files [][2]string // label, path
}

func newCertExpiry(serverCert, clientCA string) *certExpiry {
	return &certExpiry{
		desc: prometheus.NewDesc("tokenwatch_aggregator_certificate_expiry_timestamp_seconds",
			"When a certificate the aggregator holds expires (the earliest NotAfter in its file), Unix seconds.",
			[]string{"certificate"}, nil),
		files: [][2]string{{"server", serverCert}, {"client_ca", clientCA}},
	}
}

func (c *certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *certExpiry) Collect(ch chan<- prometheus.Metric) {
	for _, f := range c.files {
		t, err := tlsconf.NotAfter(f[1])
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(t.UnixNano())/1e9, f[0])
	}
}
