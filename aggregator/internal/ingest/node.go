package ingest

import (
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/wire"
)

// MaxNodeNameLen bounds Hello.node: a DNS subdomain's length, as Kubernetes
// node names.
const MaxNodeNameLen = wire.MaxNodeNameLen

// NodeAdmitter is implemented by Processors that bound the nodes of a
// cluster (*pipeline.Pipeline does): Join is asked before a live agent's
// stream is welcomed, and false refuses it. A Processor without it admits
// every node.
type NodeAdmitter interface {
	Join(cluster, node string) bool
}

var _ NodeAdmitter = (*pipeline.Pipeline)(nil)

// checkNode validates a Hello's node name (wire.ValidateNodeName, the rule
// the agent also checks its own --node-name against). It returns the
// refusal reason, "" when valid.
func checkNode(name string) string {
	if name == "" {
		return "no_node"
	}
	if wire.ValidateNodeName(name) != nil {
		return "bad_node"
	}
	return ""
}

// nodes holds the (cluster, node) pairs with a live, non-replay stream and
// the agent process (Hello.session_id, random per process) that holds
// each: a stream of another process naming a connected node is refused, so
// its heartbeats cannot stand in for the real agent's. Streams of the same
// process may overlap: an agent reconnecting after a network cut, while its
// old stream has not yet timed out, is not locked out. Its zero value is
// ready.
type nodes struct {
	mu   sync.Mutex
	live map[detect.Source]*claim
	// Refusals are counted each and logged at most once a minute per
	// reason; set with live, used under mu.
	inUse, full rate.Sometimes
}

// claim is one node's live streams, all of one agent process.
type claim struct {
	session string
	streams int
}

// admitNode checks a live agent's node before its Welcome: refused with
// AlreadyExists while a stream of another agent process (session) names the
// same cluster and node, with ResourceExhausted when the Processor's node
// bound refuses it. The returned release ends the stream's claim.
func (s *Server) admitNode(src detect.Source, session string, log *slog.Logger) (release func(), err error) {
	n := &s.nodes
	n.mu.Lock()
	if n.live == nil {
		n.live = map[detect.Source]*claim{}
		n.inUse = rate.Sometimes{First: 1, Interval: logEvery}
		n.full = rate.Sometimes{First: 1, Interval: logEvery}
	}
	c := n.live[src]
	if c != nil && c.session != session {
		n.inUse.Do(func() {
			log.Warn("agent refused: another live stream already reports for this node (logged at most once a minute; counted in tokenwatch_aggregator_streams_refused_total{reason=\"node_in_use\"})")
		})
		n.mu.Unlock()
		s.m.refused.WithLabelValues("node_in_use").Inc()
		return nil, status.Errorf(codes.AlreadyExists, "node %q of cluster %q already has a live stream", src.Node, src.Cluster)
	}
	if c == nil {
		c = &claim{session: session}
		n.live[src] = c
	}
	c.streams++
	n.mu.Unlock()
	release = func() {
		n.mu.Lock()
		if c.streams--; c.streams == 0 {
			delete(n.live, src)
		}
		n.mu.Unlock()
	}
	if a, ok := s.opts.Processor.(NodeAdmitter); ok && !a.Join(src.Cluster, src.Node) {
		release()
		s.m.refused.WithLabelValues("too_many_nodes").Inc()
		n.mu.Lock()
		n.full.Do(func() {
			log.Warn("agent refused: its cluster already has limits.max_nodes_per_cluster nodes (logged at most once a minute; reported in a nodes_refused record)")
		})
		n.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "cluster %q already has its maximum number of nodes; node %q refused", src.Cluster, src.Node)
	}
	return release, nil
}

// logEvery is how often a kind of refusal is logged at most.
const logEvery = time.Minute
