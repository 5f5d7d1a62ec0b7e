package silence

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// Reasons (tokenwatch.silence.reason).
const (
	ReasonNoHeartbeat   = "no_heartbeat"
	ReasonNoAuditGrowth = "no_audit_growth"
)

// Config is the configuration file's silence section.
type Config struct {
	// After is how long without a heartbeat, or without audit data growth,
	// makes a node silent. <= 0 turns silence detection off.
	After time.Duration
}

// Tracker follows (cluster, node) pairs. It is not safe for concurrent use.
type Tracker struct {
	cfg   Config
	nodes map[node]*state
}

type node struct{ cluster, name string }

type state struct {
	heard time.Time // aggregator clock: the last heartbeat
	// growth is when the audit log last grew, on the aggregator's clock
	// (zero: unknown). The agent's own timestamp is used only to notice a
	// change, so clock skew between agent and aggregator does not matter.
	growth     time.Time
	agentGrown time.Time // the agent's last reported value, to notice changes
	// silent is set while a cluster_silent has been emitted and not
	// resumed: since is when the silence began.
	silent bool
	reason string
	since  time.Time
}

// New returns a tracker for cfg.
func New(cfg Config) *Tracker { return &Tracker{cfg: cfg, nodes: map[node]*state{}} }

// Heard records a heartbeat from cluster/node at now (the aggregator's
// clock). lastGrowth is the agent's clock when its audit log last grew, zero
// when unknown. Only changes of that value count: the first value, and any
// later one newer than the newest so far, is growth seen at now. So the
// agent's clock never has to agree with the aggregator's, and a node whose
// log had not grown for a while before the aggregator (re)started is flagged
// After from then.
func (t *Tracker) Heard(now time.Time, cluster, name string, lastGrowth time.Time) {
	k := node{cluster, name}
	s := t.nodes[k]
	if s == nil {
		s = &state{}
		t.nodes[k] = s
	}
	if !lastGrowth.IsZero() {
		if s.agentGrown.IsZero() || lastGrowth.After(s.agentGrown) {
			s.growth = now
			s.agentGrown = lastGrowth
		}
	}
	if now.After(s.heard) {
		s.heard = now
	}
}

// Forget stops tracking cluster/node (a replaying agent, a node removed on
// purpose). No record says so.
func (t *Tracker) Forget(cluster, name string) { delete(t.nodes, node{cluster, name}) }

// Check returns the records due at now: cluster_silent for a node silent for
// After (once per silence) and cluster_resumed for a silent node heard from
// again, in (cluster, node) order.
func (t *Tracker) Check(now time.Time) []alert.Record {
	if t.cfg.After <= 0 {
		return nil
	}
	keys := make([]node, 0, len(t.nodes))
	for k := range t.nodes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].cluster != keys[j].cluster {
			return keys[i].cluster < keys[j].cluster
		}
		return keys[i].name < keys[j].name
	})
	var out []alert.Record
	for _, k := range keys {
		s := t.nodes[k]
		reason, since := t.silence(now, s)
		switch {
		case reason != "" && !s.silent:
			s.silent, s.reason, s.since = true, reason, since
			out = append(out, t.record("cluster_silent", k, s, now, now.Sub(since)))
		case reason == "" && s.silent:
			back := s.heard
			if s.reason == ReasonNoAuditGrowth && s.growth.After(back) {
				back = s.growth
			}
			out = append(out, t.record("cluster_resumed", k, s, now, back.Sub(s.since)))
			s.silent = false
		}
	}
	return out
}

// silence returns why s is silent at now and since when, "" when it is not.
func (t *Tracker) silence(now time.Time, s *state) (string, time.Time) {
	if now.Sub(s.heard) >= t.cfg.After {
		return ReasonNoHeartbeat, s.heard
	}
	if !s.growth.IsZero() && now.Sub(s.growth) >= t.cfg.After {
		return ReasonNoAuditGrowth, s.growth
	}
	return "", time.Time{}
}

func (t *Tracker) record(kind string, k node, s *state, now time.Time, silentFor time.Duration) alert.Record {
	sum := sha256.Sum256([]byte(kind + "\x00" + k.cluster + "\x00" + k.name + "\x00" + s.since.UTC().Format(time.RFC3339Nano)))
	sev, body := alert.High, ""
	what := "no heartbeat from its agent"
	if s.reason == ReasonNoAuditGrowth {
		what = "its audit log has not grown"
	}
	secs := int64(silentFor / time.Second)
	if kind == "cluster_silent" {
		body = fmt.Sprintf("Node %s of cluster %s is silent: %s for %s.", k.name, k.cluster, what, silentFor.Round(time.Second))
	} else {
		sev = alert.Low
		body = fmt.Sprintf("Node %s of cluster %s is heard from again after %s of silence (%s).", k.name, k.cluster, silentFor.Round(time.Second), what)
	}
	return alert.Record{
		ID:        "ps-" + hex.EncodeToString(sum[:16]),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  sev,
		Body:      body,
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", kind),
			alert.String("k8s.cluster.name", k.cluster),
			alert.String("k8s.node.name", k.name),
			alert.Int("tokenwatch.silent_for_seconds", secs),
			alert.String("tokenwatch.silence.reason", s.reason),
		},
	}
}
