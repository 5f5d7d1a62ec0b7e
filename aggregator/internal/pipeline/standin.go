package pipeline

// A minimal stand-in for the silence tracker, used until the package
// aggregator/internal/silence lands: newSilence then returns silence.New,
// and this file goes.

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// silencer tracks heartbeats per (cluster, node); *silence.Tracker is one.
type silencer interface {
	Heard(now time.Time, cluster, node string, lastGrowth time.Time)
	Check(now time.Time) []alert.Record
}

func newSilence(after time.Duration) silencer {
	return &standinSilence{after: after, nodes: map[[2]string]*standinNode{}}
}

type standinNode struct {
	heard  time.Time
	growth time.Time // agent clock; tracked but the stand-in uses heartbeats only
	silent bool
	since  time.Time
	resume bool
	gap    time.Duration
}

// standinSilence raises cluster_silent when a node sends no heartbeat for
// after, and cluster_resumed when it is heard again.
type standinSilence struct {
	after time.Duration
	nodes map[[2]string]*standinNode
}

func (s *standinSilence) Heard(now time.Time, cluster, node string, lastGrowth time.Time) {
	k := [2]string{cluster, node}
	n := s.nodes[k]
	if n == nil {
		n = &standinNode{}
		s.nodes[k] = n
	}
	if n.silent {
		n.silent, n.resume, n.gap = false, true, now.Sub(n.heard)
	}
	n.heard, n.growth = now, lastGrowth
}

func (s *standinSilence) Check(now time.Time) []alert.Record {
	var out []alert.Record
	keys := make([][2]string, 0, len(s.nodes))
	for k := range s.nodes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+"\x00"+keys[i][1] < keys[j][0]+"\x00"+keys[j][1] })
	for _, k := range keys {
		n := s.nodes[k]
		rec := func(kind string, sev alert.Severity, silentFor time.Duration, body string) alert.Record {
			return alert.Record{
				ID:        kind + "-" + strconv.Quote(k[0]) + "/" + strconv.Quote(k[1]) + "-" + now.UTC().Format(time.RFC3339Nano),
				EventName: alert.EventPipeline, Time: now, Severity: sev, Body: body,
				Attrs: []alert.Attr{
					alert.String("tokenwatch.pipeline.kind", kind),
					alert.String("k8s.cluster.name", k[0]),
					alert.String("k8s.node.name", k[1]),
					alert.Int("tokenwatch.silent_for_seconds", int64(silentFor/time.Second)),
				},
			}
		}
		if n.resume {
			n.resume = false
			out = append(out, rec("cluster_resumed", alert.Low, n.gap,
				fmt.Sprintf("The tokenwatch agent on node %s of cluster %s is heard from again after %s.", k[1], k[0], n.gap.Round(time.Second))))
		}
		if !n.silent && now.Sub(n.heard) >= s.after {
			n.silent = true
			out = append(out, rec("cluster_silent", alert.High, now.Sub(n.heard),
				fmt.Sprintf("No heartbeat from the tokenwatch agent on node %s of cluster %s for %s.", k[1], k[0], now.Sub(n.heard).Round(time.Second))))
		}
	}
	return out
}
