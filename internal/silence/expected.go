package silence

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// ReasonNodesMissing is a whole cluster's: fewer of its nodes are tracked
// than Config.ExpectedNodes says it has, so the audit log of at least one
// kube-apiserver is read by no agent (one never connected, or was
// forgotten).
const ReasonNodesMissing = "nodes_missing"

// shortage is a cluster of ExpectedNodes with fewer nodes tracked.
type shortage struct {
	since  time.Time // when it was first seen short
	silent bool      // a nodes_missing cluster_silent was emitted
}

// expectedRecords returns, in cluster order, a cluster_silent for each
// cluster of ExpectedNodes that has had fewer nodes tracked than expected
// for After (counted from the first Check that saw it short: a cluster
// whose agents never connected too), and a cluster_resumed for each such
// cluster tracking enough nodes again, or no longer expected.
func (t *Tracker) expectedRecords(now time.Time) []alert.Record {
	clusters := make([]string, 0, len(t.cfg.ExpectedNodes)+len(t.short))
	for c := range t.cfg.ExpectedNodes {
		clusters = append(clusters, c)
	}
	for c := range t.short {
		if _, ok := t.cfg.ExpectedNodes[c]; !ok {
			clusters = append(clusters, c)
		}
	}
	sort.Strings(clusters)
	var out []alert.Record
	for _, c := range clusters {
		want, have, sh := t.cfg.ExpectedNodes[c], t.clusters[c], t.short[c]
		switch {
		case have < want && sh == nil:
			t.short[c] = &shortage{since: now}
		case have < want && !sh.silent && now.Sub(sh.since) >= t.cfg.After:
			sh.silent = true
			out = append(out, t.nodesRecord("cluster_silent", c, want, sh.since, now))
		case have >= want && sh != nil:
			if sh.silent {
				out = append(out, t.nodesRecord("cluster_resumed", c, want, sh.since, now))
			}
			delete(t.short, c)
		}
	}
	return out
}

// nodesRecord is a nodes_missing record of cluster c, which expects want
// nodes, short since since.
func (t *Tracker) nodesRecord(kind, c string, want int, since, now time.Time) alert.Record {
	var names []string
	for k := range t.nodes {
		if k.cluster == c {
			names = append(names, k.name)
		}
	}
	sort.Strings(names)
	heard := "none"
	if len(names) > 0 {
		heard = strings.Join(names, ", ")
	}
	silentFor := now.Sub(since)
	body := fmt.Sprintf("Cluster %s is silent: %d of its %d control-plane nodes (silence.expected_nodes) are heard (%s) for %s; "+
		"token requests served by a kube-apiserver whose audit log no agent reads are not seen. "+
		"Check that an agent runs on every control-plane node (node selector, tolerations) and connects.",
		c, len(names), want, heard, silentFor.Round(time.Second))
	if kind != "cluster_silent" {
		body = fmt.Sprintf("Cluster %s: %d of its %d expected control-plane nodes are heard again (%s), after %s with fewer.",
			c, len(names), want, heard, silentFor.Round(time.Second))
	}
	r := silenceRecord(kind, c, "", ReasonNodesMissing, since, now, silentFor, body)
	r.Attrs = append(r.Attrs,
		alert.Int("tokenwatch.nodes.expected", int64(want)),
		alert.Int("tokenwatch.nodes.heard", int64(len(names))),
		alert.Strings("tokenwatch.nodes.heard_names", names))
	return r
}

// SilentKey is a cluster and a reason of silence.
type SilentKey struct{ Cluster, Reason string }

// Silent counts what is silent now, per cluster and reason: the nodes silent
// for a node's reason, 1 for a whole cluster's (no_token_requests,
// nodes_missing). Each has had its cluster_silent record and no
// cluster_resumed since.
func (t *Tracker) Silent() map[SilentKey]int {
	out := map[SilentKey]int{}
	for k, s := range t.nodes {
		if s.silent {
			out[SilentKey{k.cluster, s.reason}]++
		}
	}
	for c, tk := range t.tokens {
		if tk.silent {
			out[SilentKey{c, ReasonNoTokenRequests}]++
		}
	}
	for c, sh := range t.short {
		if sh.silent {
			out[SilentKey{c, ReasonNodesMissing}]++
		}
	}
	return out
}
