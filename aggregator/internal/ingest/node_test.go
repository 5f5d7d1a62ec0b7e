package ingest

import (
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
)

func TestNodeNames(t *testing.T) {
	tests := []struct {
		give string
		want codes.Code
	}{
		{give: "cp-1", want: codes.OK},
		{give: "ip-10-0-1-2.eu-west-1.compute.internal", want: codes.OK},
		{give: "Control_Plane-01", want: codes.OK},
		{give: strings.Repeat("a", MaxNodeNameLen), want: codes.OK},
		{give: "", want: codes.InvalidArgument},
		{give: strings.Repeat("a", MaxNodeNameLen+1), want: codes.InvalidArgument},
		{give: strings.Repeat("n", 40000), want: codes.InvalidArgument},
		{give: "cp 1", want: codes.InvalidArgument},
		{give: "cp/1", want: codes.InvalidArgument},
		{give: "cp\x00", want: codes.InvalidArgument},
		{give: "nœud", want: codes.InvalidArgument},
		{give: "cp-1\n", want: codes.InvalidArgument},
	}
	rec := &recorder{}
	h := insecureHarness(t, rec)
	for _, tt := range tests {
		st := h.stream(t)
		send(t, st, hello("prod", tt.give, false))
		got := codes.OK
		if _, err := st.Recv(); err != nil {
			got = recvErr(t, st)
		}
		_ = st.CloseSend()
		if got != tt.want {
			t.Errorf("Hello.node %.40q: %v, want %v", tt.give, got, tt.want)
		}
	}
}

// admitter is a recorder with a node bound per cluster.
type admitter struct {
	recorder
	max   int
	mu    sync.Mutex
	nodes map[string]bool
}

func (a *admitter) Join(cluster, node string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := cluster + "/" + node
	if a.nodes[k] {
		return true
	}
	if len(a.nodes) >= a.max {
		return false
	}
	a.nodes[k] = true
	return true
}

// TestSecondLiveStreamForANodeRefused: while a node's agent is connected, a
// live stream of another agent process (session) naming the same cluster
// and node is refused (AlreadyExists), so its heartbeats cannot stand in for
// the real agent's; the same process may reconnect over its old stream; a
// replay of the same node is not a live agent and is served; once the
// first stream ends, the node may connect again.
func TestSecondLiveStreamForANodeRefused(t *testing.T) {
	rec := &recorder{}
	h := insecureHarness(t, rec)
	first := h.stream(t)
	send(t, first, hello("prod", "cp-1", false))
	recv(t, first)

	reconnect := h.stream(t)
	send(t, reconnect, hello("prod", "cp-1", false)) // session s1, as first's
	recv(t, reconnect)
	_ = reconnect.CloseSend()
	recvErr(t, reconnect)

	second := h.stream(t)
	other := hello("prod", "cp-1", false)
	other.GetHello().SessionId = "impostor"
	send(t, second, other)
	if code := recvErr(t, second); code != codes.AlreadyExists {
		t.Fatalf("second live stream for prod/cp-1: %v, want AlreadyExists", code)
	}
	replay := h.stream(t)
	send(t, replay, hello("prod", "cp-1", true))
	if w := recv(t, replay).GetWelcome(); w == nil {
		t.Fatalf("replay of prod/cp-1 not welcomed")
	}
	cp2 := h.stream(t)
	send(t, cp2, hello("prod", "cp-2", false))
	recv(t, cp2)

	_ = first.CloseSend()
	if code := recvErr(t, first); code != codes.OK {
		t.Fatalf("first stream ended with %v", code)
	}
	again := h.stream(t)
	send(t, again, other)
	if w := recv(t, again).GetWelcome(); w == nil {
		t.Fatalf("prod/cp-1 after its stream ended not welcomed")
	}
	if got := counter(t, h.srv, "node_in_use"); got != 1 {
		t.Errorf("refused{node_in_use} = %v, want 1", got)
	}
}

// TestNodeBoundRefusesNewNodes: a Processor that bounds a cluster's nodes
// refuses a live stream for a new node (ResourceExhausted); known nodes and
// replays still get in.
func TestNodeBoundRefusesNewNodes(t *testing.T) {
	a := &admitter{max: 2, nodes: map[string]bool{}}
	h := insecureHarness(t, a)
	for _, n := range []string{"cp-1", "cp-2"} {
		st := h.stream(t)
		send(t, st, hello("prod", n, false))
		recv(t, st)
		_ = st.CloseSend()
		recvErr(t, st)
	}
	st := h.stream(t)
	send(t, st, hello("prod", "cp-3", false))
	if code := recvErr(t, st); code != codes.ResourceExhausted {
		t.Fatalf("third node: %v, want ResourceExhausted", code)
	}
	// The refused stream released its claim: the refusal repeats, it does
	// not turn into AlreadyExists.
	st = h.stream(t)
	send(t, st, hello("prod", "cp-3", false))
	if code := recvErr(t, st); code != codes.ResourceExhausted {
		t.Fatalf("third node again: %v, want ResourceExhausted", code)
	}
	for _, hl := range []struct {
		node   string
		replay bool
	}{{"cp-1", false}, {"cp-9", true}} {
		st := h.stream(t)
		send(t, st, hello("prod", hl.node, hl.replay))
		if w := recv(t, st).GetWelcome(); w == nil {
			t.Fatalf("%s (replay %v) not welcomed", hl.node, hl.replay)
		}
	}
	if got := counter(t, h.srv, "too_many_nodes"); got != 2 {
		t.Errorf("refused{too_many_nodes} = %v, want 2", got)
	}
}

func counter(t *testing.T, s *Server, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := s.m.refused.WithLabelValues(reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
