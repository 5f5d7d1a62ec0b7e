package pipeline

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
)

// KindLineageUnsupported is the tokenwatch.pipeline.kind of the record of
// an agent that does not declare lineage support.
const KindLineageUnsupported = "lineage_unsupported_agent"

// Use is a request an agent sent for lineage (Batch.uses).
type Use struct {
	Event    *audit.Event
	Kinds    []lineage.Kind // what it matched; nil: decide from the event
	Lookback bool
}

// unsupportedKey names one agent build reported as lacking lineage.
type unsupportedKey struct{ cluster, node, version string }

// Watches returns the current watch set, for a newly connected agent:
// empty when lineage is off.
func (p *Pipeline) Watches() []lineage.Watch {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lin == nil {
		return nil
	}
	return p.lin.Watches(p.now())
}

// LineageConfig returns the lineage configuration in force (read at start).
func (p *Pipeline) LineageConfig() lineage.Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.linCfg
}

// LineageUnsupported reports an agent that does not declare lineage
// support: a tokenwatch.pipeline record of kind lineage_unsupported_agent,
// committed at most once per (cluster, node, agent version) per process
// run, and counted in the gauge tokenwatch_aggregator_lineage_unsupported_agents.
// Nothing is reported while lineage is off.
func (p *Pipeline) LineageUnsupported(ctx context.Context, src detect.Source, agentVersion string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k := unsupportedKey{src.Cluster, src.Node, agentVersion}
	p.mu.Lock()
	if !p.linCfg.Enabled || p.unsupported[k] {
		p.mu.Unlock()
		return nil
	}
	rec := unsupportedRecord(src, agentVersion, p.now(), p.runID)
	p.unsupported[k] = true
	wait := p.store.Submit(state.Change{Records: []alert.Record{rec}})
	p.mu.Unlock()
	if _, err := wait(); err != nil {
		p.mu.Lock()
		delete(p.unsupported, k) // report it on the agent's next try
		p.mu.Unlock()
		return fmt.Errorf("lineage unsupported agent: %w", err)
	}
	return nil
}

// unsupportedRecord is the lineage_unsupported_agent record of an agent.
// Its ID is unique to this process run (runID), so that each run reports
// the agent once.
func unsupportedRecord(src detect.Source, version string, now time.Time, runID string) alert.Record {
	h := sha256.New()
	for _, s := range []string{runID, src.Cluster, src.Node, version} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return alert.Record{
		ID:        "lineage-unsupported-" + hex.EncodeToString(h.Sum(nil)[:16]),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.Medium,
		Body: fmt.Sprintf("The tokenwatch agent %s on node %s of cluster %s does not support token lineage: uses of watched tokens on that node are not reported.",
			version, src.Node, src.Cluster),
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", KindLineageUnsupported),
			alert.String("k8s.cluster.name", src.Cluster),
			alert.String("k8s.node.name", src.Node),
			alert.String("tokenwatch.agent.version", version),
		},
	}
}

// newRunID returns an identifier of this process run.
func newRunID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// openLineage builds the lineage state from the configuration read at
// start and registers its metrics.
func (p *Pipeline) openLineage(reg prometheus.Registerer) error {
	p.lin = lineage.New(p.linCfg, lineage.Hooks{})
	if reg == nil {
		return nil
	}
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwatch_aggregator_lineage_unsupported_agents",
		Help: "Agents (cluster, node, agent version) reported since the start as not declaring lineage support: they are pushed no watches.",
	}, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(len(p.unsupported))
	}))
}
