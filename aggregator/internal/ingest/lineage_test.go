package ingest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

var (
	watchFrom  = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)
	watchUntil = watchFrom.Add(time.Hour)
)

func tokenWatch(jti string) lineage.Watch {
	return lineage.Watch{Kind: lineage.KindToken, Key: jti, From: watchFrom, Until: watchUntil}
}

// lineageUses and lineageCounts are a lineage agent's batch content.
func lineageUses() []*tokenwatchv1.LineageEvent {
	ev := tokenEvent("u1", "system:serviceaccount:team-a:app")
	ev.Verb, ev.ObjectRef = "list", &tokenwatchv1.ObjectRef{Resource: "secrets", Namespace: "kube-system"}
	ev.User.Extra = map[string]*tokenwatchv1.StringList{lineage.ExtraCredentialID: {Values: []string{"JTI=j1"}}}
	return []*tokenwatchv1.LineageEvent{{Event: ev, Matched: []tokenwatchv1.LineageKind{tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}, Lookback: true}}
}

func lineageCounts() []*tokenwatchv1.UseCount {
	return []*tokenwatchv1.UseCount{{
		Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: "j1", Uses: 3,
		Verbs: []*tokenwatchv1.KeyCount{{Key: "list secrets kube-system", Count: 3}}, SourceIps: []string{"192.0.2.7"},
		First: timestamppb.New(watchFrom), Last: timestamppb.New(watchFrom.Add(time.Minute)), User: "system:serviceaccount:team-a:app",
	}}
}

// linProc is a Processor with the lineage side: each batch adds the
// watches next gives it (by its first event's audit ID) to the set.
type linProc struct {
	recorder
	cfg lineage.Config

	lmu         sync.Mutex
	set         []lineage.Watch
	next        map[string][]lineage.Watch // by audit ID
	unsupported []string
}

func newLinProc(enabled bool, set ...lineage.Watch) *linProc {
	return &linProc{cfg: lineage.Config{Enabled: enabled, Lookback: 2 * time.Minute}, set: set, next: map[string][]lineage.Watch{}}
}

func (p *linProc) Process(ctx context.Context, b pipeline.Batch) (pipeline.Result, error) {
	res, err := p.recorder.Process(ctx, b)
	if err != nil || len(b.Events) == 0 {
		return res, err
	}
	p.lmu.Lock()
	defer p.lmu.Unlock()
	res.WatchAdd = p.next[b.Events[0].AuditID]
	p.set = append(p.set, res.WatchAdd...)
	return res, nil
}

func (p *linProc) Watches() []lineage.Watch {
	p.lmu.Lock()
	defer p.lmu.Unlock()
	return slices.Clone(p.set)
}

func (p *linProc) LineageConfig() lineage.Config { return p.cfg }

func (p *linProc) LineageUnsupported(_ context.Context, src detect.Source, version string) error {
	p.lmu.Lock()
	defer p.lmu.Unlock()
	p.unsupported = append(p.unsupported, src.Cluster+"/"+src.Node+"@"+version)
	return nil
}

func (p *linProc) willAdd(auditID string, ws ...lineage.Watch) {
	p.lmu.Lock()
	defer p.lmu.Unlock()
	p.next[auditID] = ws
}

func (p *linProc) unsupportedAgents() []string {
	p.lmu.Lock()
	defer p.lmu.Unlock()
	return slices.Clone(p.unsupported)
}

func lineageHello(cluster, node string) *tokenwatchv1.StreamRequest {
	h := hello(cluster, node, false)
	h.GetHello().Features = []string{FeatureLineage}
	return h
}

// openLineage opens a lineage stream and returns it with its Welcome and
// the watch set of its first updates (those up to the one that completes
// the set: want of them).
func openLineage(t *testing.T, h *harness, node string, want int) (tokenwatchv1.AuditStreamService_StreamClient, *tokenwatchv1.Welcome, []*tokenwatchv1.WatchUpdate) {
	t.Helper()
	st := h.stream(t)
	send(t, st, lineageHello("prod", node))
	w := recv(t, st).GetWelcome()
	if w == nil {
		t.Fatal("first response is no Welcome")
	}
	var ups []*tokenwatchv1.WatchUpdate
	for n := 0; len(ups) == 0 || n < want; {
		u := recv(t, st).GetWatch()
		if u == nil {
			t.Fatalf("response %d after the Welcome is no WatchUpdate", len(ups))
		}
		ups = append(ups, u)
		n += len(u.GetAdd())
	}
	return st, w, ups
}

func watchesOf(ups ...*tokenwatchv1.WatchUpdate) []lineage.Watch {
	var ws []lineage.Watch
	for _, u := range ups {
		for _, p := range u.GetAdd() {
			w, _ := wire.WatchFromProto(p)
			ws = append(ws, w)
		}
	}
	return ws
}

func lineageHarness(t *testing.T, p *linProc, opts Options) (*harness, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	opts.Processor, opts.Insecure, opts.Registerer = p, true, reg
	s := New(opts)
	return start(t, s, s.ServerOptions(), insecure.NewCredentials()), reg
}

// TestLineageStream: a lineage agent's Welcome carries the lookback and the
// whole set follows with reset; the watches a batch creates reach the
// batch's stream before its ack, and every other lineage stream; an agent
// without the feature is reported, is sent no update and is acknowledged
// as before.
func TestLineageStream(t *testing.T) {
	p := newLinProc(true, tokenWatch("j0"), tokenWatch("j1"))
	h, reg := lineageHarness(t, p, Options{})

	a, w, ups := openLineage(t, h, "cp-1", 2)
	if got := w.GetLineage().GetLookbackMs(); got != 120000 {
		t.Errorf("Welcome lookback_ms = %d, want 120000", got)
	}
	if len(ups) != 1 || !ups[0].GetReset_() || len(ups[0].GetRemove()) != 0 {
		t.Errorf("first updates = %v, want one with reset", ups)
	}
	if diff := cmp.Diff([]lineage.Watch{tokenWatch("j0"), tokenWatch("j1")}, watchesOf(ups...)); diff != "" {
		t.Errorf("first set (-want +got):\n%s", diff)
	}
	b, _, _ := openLineage(t, h, "cp-2", 2)

	old := h.stream(t)
	send(t, old, hello("prod", "cp-3", false))
	if w := recv(t, old).GetWelcome(); w == nil || w.GetLineage() != nil {
		t.Fatalf("Welcome of an agent without lineage = %v, want one without lineage", w)
	}

	p.willAdd("m1", tokenWatch("j2"), tokenWatch("j3"))
	send(t, a, batchMsg(1, "m1"))
	u := recv(t, a).GetWatch()
	if u.GetReset_() || !cmp.Equal(watchesOf(u), []lineage.Watch{tokenWatch("j2"), tokenWatch("j3")}) {
		t.Fatalf("after batch 1 stream a got %v, want the update adding j2 and j3 before the ack", u)
	}
	if got := recv(t, a).GetAck().GetSeq(); got != 1 {
		t.Fatalf("then ack %d, want 1", got)
	}
	if u := recv(t, b).GetWatch(); !cmp.Equal(watchesOf(u), []lineage.Watch{tokenWatch("j2"), tokenWatch("j3")}) {
		t.Fatalf("stream b got %v, want the update adding j2 and j3", u)
	}

	p.willAdd("m2", tokenWatch("j4"))
	send(t, old, batchMsg(1, "m2"))
	if r := recv(t, old); r.GetAck().GetSeq() != 1 {
		t.Fatalf("the agent without lineage got %v, want ack 1 and no update", r)
	}
	// Reported before its first batch is served.
	if got, want := p.unsupportedAgents(), []string{"prod/cp-3@test"}; !slices.Equal(got, want) {
		t.Errorf("LineageUnsupported calls = %q, want %q", got, want)
	}
	for name, st := range map[string]tokenwatchv1.AuditStreamService_StreamClient{"a": a, "b": b} {
		if u := recv(t, st).GetWatch(); !cmp.Equal(watchesOf(u), []lineage.Watch{tokenWatch("j4")}) {
			t.Fatalf("stream %s got %v, want the update adding j4 of the other agent's batch", name, u)
		}
	}
	if got := metricValue(t, reg, "tokenwatch_aggregator_lineage_streams"); got != 2 {
		t.Errorf("lineage streams = %v, want 2", got)
	}
	// 2 first sets, 1 update of batch m1 and 1 of m2 on each stream.
	if got := metricValue(t, reg, "tokenwatch_aggregator_lineage_watch_updates_total"); got != 6 {
		t.Errorf("watch updates sent = %v, want 6", got)
	}
}

// TestLineageDisabled: with lineage off, a lineage agent's Welcome has no
// lineage (the agent turns it off), it gets no update and is not reported.
func TestLineageDisabled(t *testing.T) {
	p := newLinProc(false, tokenWatch("j0"))
	h, _ := lineageHarness(t, p, Options{})
	st := h.stream(t)
	send(t, st, lineageHello("prod", "cp-1"))
	if w := recv(t, st).GetWelcome(); w == nil || w.GetLineage() != nil {
		t.Fatalf("Welcome = %v, want one without lineage", w)
	}
	p.willAdd("m1", tokenWatch("j1"))
	send(t, st, batchMsg(1, "m1"))
	if r := recv(t, st); r.GetAck().GetSeq() != 1 {
		t.Fatalf("got %v, want ack 1 and no update", r)
	}
	if got := p.unsupportedAgents(); len(got) != 0 {
		t.Errorf("LineageUnsupported calls = %q, want none", got)
	}
}

// TestLineageFullSetChunked: a large set arrives in several updates, each
// message under 4 MiB (the client's default receive limit enforces it),
// reset on the first only, the set whole and in order.
func TestLineageFullSetChunked(t *testing.T) {
	var set []lineage.Watch
	for i := range 12000 { // about 5.5 MB encoded
		set = append(set, lineage.Watch{Kind: lineage.KindActorUser, Key: fmt.Sprintf("user-%08d@%s", i, strings.Repeat("x", 420)),
			From: watchFrom, Until: watchUntil})
	}
	p := newLinProc(true, set...)
	h, _ := lineageHarness(t, p, Options{})
	_, _, ups := openLineage(t, h, "cp-1", len(set))
	if len(ups) < 2 {
		t.Fatalf("%d updates, want the set split", len(ups))
	}
	for i, u := range ups {
		size := proto.Size(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: u}})
		if size >= 4<<20 {
			t.Errorf("update %d is %d bytes, want under 4 MiB", i, size)
		}
		if u.GetReset_() != (i == 0) {
			t.Errorf("update %d reset = %v, want %v", i, u.GetReset_(), i == 0)
		}
	}
	got := watchesOf(ups...)
	if !slices.EqualFunc(set, got, func(a, b lineage.Watch) bool {
		return a.Kind == b.Kind && a.Key == b.Key && a.From.Equal(b.From) && a.Until.Equal(b.Until)
	}) {
		t.Errorf("the set received (%d watches) differs from the set (%d)", len(got), len(set))
	}
}

// TestLineageSlowStreamDropped: a lineage stream whose agent reads nothing
// is ended, at once, once its pending updates pass the bound, counted, while the
// other streams' batches are acknowledged and their updates delivered
// throughout.
func TestLineageSlowStreamDropped(t *testing.T) {
	p := newLinProc(true)
	h, reg := lineageHarness(t, p, Options{MaxPendingWatches: 64})
	// A connection of its own, with fixed windows, for the agent that
	// does not read: its updates back up after about 128 KiB.
	slowConn, err := grpc.NewClient(h.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close()
	slow, _, _ := openLineage(t, &harness{srv: h.srv, conn: slowConn}, "cp-slow", 0)
	fast, _, _ := openLineage(t, h, "cp-1", 0)

	key := strings.Repeat("k", 1000)
	dropped := 0.0
	seq := uint64(0)
	for dropped == 0 {
		seq++
		if seq > 500 {
			t.Fatal("the slow stream was never dropped")
		}
		id := fmt.Sprintf("m%d", seq)
		var ws []lineage.Watch
		for i := range 32 {
			ws = append(ws, tokenWatch(fmt.Sprintf("%s-%d-%d", key, seq, i)))
		}
		p.willAdd(id, ws...)
		send(t, fast, batchMsg(seq, id))
		if u := recv(t, fast).GetWatch(); len(u.GetAdd()) != 32 {
			t.Fatalf("batch %d: got %v, want its update", seq, u)
		}
		if got := recv(t, fast).GetAck().GetSeq(); got != seq {
			t.Fatalf("batch %d: ack %d", seq, got)
		}
		dropped = metricValue(t, reg, "tokenwatch_aggregator_lineage_streams_dropped_total")
	}
	if dropped != 1 {
		t.Errorf("streams dropped = %v, want 1", dropped)
	}
	if got := metricValue(t, reg, "tokenwatch_aggregator_lineage_streams"); got != 1 {
		t.Errorf("lineage streams = %v, want 1 (the fast one)", got)
	}
	// The slow stream ends at once, its agent sending nothing more (it
	// used to end only with its next message).
	ended := make(chan codes.Code, 1)
	go func() { ended <- recvErr(t, slow) }()
	select {
	case code := <-ended:
		if code != codes.ResourceExhausted {
			t.Errorf("slow stream ended with %v, want ResourceExhausted", code)
		}
	case <-time.After(time.Minute):
		t.Fatal("the slow stream did not end until its agent sent something")
	}
	seq++
	p.willAdd("last", tokenWatch("j-last"))
	send(t, fast, batchMsg(seq, "last"))
	if u := recv(t, fast).GetWatch(); !cmp.Equal(watchesOf(u), []lineage.Watch{tokenWatch("j-last")}) {
		t.Fatalf("fast stream after the drop got %v", u)
	}
	if got := recv(t, fast).GetAck().GetSeq(); got != seq {
		t.Fatalf("fast stream after the drop: ack %d, want %d", got, seq)
	}
}

// metricValue returns the value of the metric name (a gauge or a counter).
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestWatchUpdates(t *testing.T) {
	rm := lineage.Watch{Kind: lineage.KindToken, Key: "j1"}
	tests := []struct {
		name           string
		add, remove    []lineage.Watch
		reset          bool
		wantAdd        [][]string
		wantRemove     [][]string
		wantFirstReset bool
	}{
		{"empty set still resets", nil, nil, true, [][]string{nil}, [][]string{nil}, true},
		{"no change, no update", nil, nil, false, nil, nil, false},
		{"added and removed is removed", []lineage.Watch{tokenWatch("j1"), tokenWatch("j2")}, []lineage.Watch{rm}, false,
			[][]string{{"j2"}}, [][]string{{"j1"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			items := watchUpdates(tt.add, tt.remove, tt.reset)
			var gotAdd, gotRemove [][]string
			for _, it := range items {
				u := it.msg.GetWatch()
				var a, r []string
				for _, w := range u.GetAdd() {
					a = append(a, w.GetKey())
				}
				for _, w := range u.GetRemove() {
					r = append(r, w.GetKey())
					if w.GetFrom() != nil || w.GetUntil() != nil {
						t.Errorf("remove %s carries bounds", w.GetKey())
					}
				}
				gotAdd, gotRemove = append(gotAdd, a), append(gotRemove, r)
			}
			if diff := cmp.Diff(tt.wantAdd, gotAdd, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("adds (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantRemove, gotRemove, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("removes (-want +got):\n%s", diff)
			}
			if len(items) > 0 && items[0].msg.GetWatch().GetReset_() != tt.wantFirstReset {
				t.Errorf("first reset = %v, want %v", items[0].msg.GetWatch().GetReset_(), tt.wantFirstReset)
			}
		})
	}
}

// chainRule judges like the default list: a "system:" user is excluded by
// default, "vault" by an explicit entry, anyone else alerts; only token
// creates match.
type chainRule struct{}

func (chainRule) Screen(s *rule.Subject) rule.Verdict {
	if s.Verb != "create" || s.Subresource != "token" {
		return rule.Verdict{}
	}
	switch {
	case strings.HasPrefix(s.User, "system:"):
		return rule.Verdict{Match: true, Excluded: true, ByDefault: true, By: "system:*"}
	case s.User == "vault":
		return rule.Verdict{Match: true, Excluded: true, By: "vault"}
	}
	return rule.Verdict{Match: true}
}

// chainProc is a linProc that screens with chainRule.
type chainProc struct{ *linProc }

func (chainProc) Screen(s *rule.Subject) rule.Verdict { return chainRule{}.Screen(s) }

func withCredential(e *tokenwatchv1.TokenEvent, values ...string) *tokenwatchv1.TokenEvent {
	e.User.Extra = map[string]*tokenwatchv1.StringList{"other": {Values: []string{"JTI=not-this-key"}}, lineage.ExtraCredentialID: {Values: values}}
	return e
}

// TestChainException: with lineage on, an excluded token create by a user
// authenticated with a bound token reaches Process with its verdict (the
// pipeline decides whether it is a chain, which overrides an exclusion of
// the default list only, or a use of a watched token); without a token
// credential, or with lineage off, it is screened out as excluded. The
// codec (screening the encoded events) and prepare (judging a message the
// codec left to plain protobuf) decide alike.
func TestChainException(t *testing.T) {
	byDefault := rule.Verdict{Match: true, Excluded: true, ByDefault: true, By: "system:*"}
	explicit := rule.Verdict{Match: true, Excluded: true, By: "vault"}
	events := []*tokenwatchv1.TokenEvent{
		withCredential(tokenEvent("chain", "system:serviceaccount:ns:app"), "X509SHA256=ab", "JTI=j1"),
		withCredential(tokenEvent("cert", "system:serviceaccount:ns:app"), "X509SHA256=ab"),
		withCredential(tokenEvent("empty", "system:serviceaccount:ns:app"), "JTI="),
		tokenEvent("none", "system:node:cp-1"),
		withCredential(tokenEvent("vault", "vault"), "JTI=j2"),
		tokenEvent("alice", "alice"),
	}
	tests := []struct {
		name     string
		enabled  bool
		wantIDs  []string
		wantVs   []rule.Verdict
		excluded int
	}{
		{"lineage on", true, []string{"chain", "vault", "alice"}, []rule.Verdict{byDefault, explicit, {Match: true}}, 3},
		{"lineage off", false, []string{"alice"}, []rule.Verdict{{Match: true}}, 5},
	}
	for _, tt := range tests {
		for _, path := range []string{"codec", "prepare"} {
			t.Run(tt.name+"/"+path, func(t *testing.T) {
				p := chainProc{newLinProc(tt.enabled)}
				s := New(Options{Processor: p, Insecure: true})
				b := &tokenwatchv1.Batch{Seq: 1}
				for _, e := range events {
					b.Events = append(b.Events, proto.CloneOf(e))
				}
				var sc screening
				if path == "codec" {
					raw, err := proto.Marshal(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}})
					if err != nil {
						t.Fatal(err)
					}
					c := newCodec(p)
					c.chains = tt.enabled
					var ok bool
					if b, ok = c.batchRequest(raw, &sc); !ok {
						t.Fatal("codec did not screen the batch")
					}
				}
				pb := s.prepare(detect.Source{Cluster: "prod", Node: "cp-1"}, b, sc).batch
				var ids []string
				for _, e := range pb.Events {
					ids = append(ids, e.AuditID)
				}
				if !slices.Equal(ids, tt.wantIDs) || pb.Excluded != tt.excluded {
					t.Errorf("Process gets %q, %d excluded; want %q, %d", ids, pb.Excluded, tt.wantIDs, tt.excluded)
				}
				if diff := cmp.Diff(tt.wantVs, pb.Verdicts); diff != "" {
					t.Errorf("verdicts (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// TestPrepareLineage: a batch's uses and counts reach Process converted,
// those that cannot be read left out, and merged batches keep them in
// order.
func TestPrepareLineage(t *testing.T) {
	s := New(Options{Processor: newLinProc(true), Insecure: true})
	b1 := &tokenwatchv1.Batch{Seq: 1, Uses: append(lineageUses(), &tokenwatchv1.LineageEvent{}), Counts: append(lineageCounts(), &tokenwatchv1.UseCount{Key: "no kind"})}
	b2 := &tokenwatchv1.Batch{Seq: 2, Uses: lineageUses()}
	b2.Uses[0].Event.AuditId = "u2"
	src := detect.Source{Cluster: "prod", Node: "cp-1"}
	p := merge(s.prepare(src, b1, screening{}), s.prepare(src, b2, screening{}))
	var ids []string
	for _, u := range p.batch.Uses {
		ids = append(ids, u.Event.AuditID)
		if !slices.Equal(u.Kinds, []lineage.Kind{lineage.KindToken}) || !u.Lookback {
			t.Errorf("use %s: kinds %v, lookback %v; want [token], true", u.Event.AuditID, u.Kinds, u.Lookback)
		}
	}
	if !slices.Equal(ids, []string{"u1", "u2"}) {
		t.Errorf("uses %q, want [u1 u2]", ids)
	}
	want, _ := wire.CountFromProto(lineageCounts()[0])
	if diff := cmp.Diff([]lineage.Count{want}, p.batch.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if b1.Uses != nil || b1.Counts != nil {
		t.Error("the protobuf uses and counts are still held")
	}
	if p.cost <= 0 {
		t.Errorf("cost %d", p.cost)
	}
}

// FuzzCredentialJTI: the codec's scan of an encoded event's user.extra
// finds a token credential wherever the decoded event has one (it may
// find one more often: any repeated map entry counts, not only the last),
// so that no possible chain is screened out.
func FuzzCredentialJTI(f *testing.F) {
	for _, e := range []*tokenwatchv1.TokenEvent{
		withCredential(tokenEvent("a", "system:x"), "X509SHA256=ab", "JTI=j1"),
		withCredential(tokenEvent("b", "system:x"), "JTI="),
		tokenEvent("c", "alice"),
	} {
		raw, _ := proto.Marshal(e)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var e tokenwatchv1.TokenEvent
		if proto.Unmarshal(raw, &e) != nil {
			return
		}
		if protoCredentialJTI(&e) && !scanCredentialJTI(raw) {
			t.Fatalf("decoded event has a token credential %v, the scan finds none", e.GetUser().GetExtra())
		}
	})
}
