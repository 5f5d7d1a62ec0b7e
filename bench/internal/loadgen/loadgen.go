// Package loadgen is the aggregator ingest benchmark's load generator: many
// concurrent agent streams speaking tokenwatch.v1.AuditStreamService
// directly, each sending batches of token-create events (a realistic mix:
// mostly system identities the exclusions drop, some alerting) with a window
// of unacknowledged batches, as the agent's sender does.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/auditgen"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Mix is the event pool a load is drawn from.
type Mix struct {
	Excluded []*tokenwatchv1.TokenEvent // system identities the default exclusions drop
	Alerting []*tokenwatchv1.TokenEvent // requests that must alert
}

// NewMix decodes the ResponseComplete token creates of a generated audit
// log (seeded) and sorts them by whether the generator says they alert.
func NewMix(seed uint64) (Mix, error) {
	var buf bytes.Buffer
	cfg := auditgen.DefaultConfig()
	cfg.Seed, cfg.Lines, cfg.TokenRate, cfg.Pad = seed, 20000, 0.05, 0
	want, _, err := auditgen.Generate(&buf, cfg)
	if err != nil {
		return Mix{}, fmt.Errorf("generate event mix: %w", err)
	}
	alerting := map[string]bool{}
	for _, w := range want {
		alerting[w.AuditID] = true
	}
	var m Mix
	for line := range bytes.Lines(buf.Bytes()) {
		ev, err := audit.Decode(line)
		if err != nil {
			return Mix{}, fmt.Errorf("decode generated line: %w", err)
		}
		if !ev.IsTokenCreate() || ev.Stage != audit.StageResponseComplete {
			continue
		}
		if alerting[ev.AuditID] {
			m.Alerting = append(m.Alerting, wire.ToProto(ev))
		} else {
			m.Excluded = append(m.Excluded, wire.ToProto(ev))
		}
	}
	if len(m.Excluded) == 0 || len(m.Alerting) == 0 {
		return Mix{}, fmt.Errorf("event mix: %d excluded and %d alerting events, want both", len(m.Excluded), len(m.Alerting))
	}
	return m, nil
}

// Config describes a load.
type Config struct {
	Target string
	// Creds returns the transport credentials of an agent of cluster.
	Creds func(cluster string) (credentials.TransportCredentials, error)
	// Streams is the number of concurrent agent streams; stream i claims
	// cluster "bench-<i mod Clusters>" and node "node-<i>".
	Streams  int
	Clusters int // default min(Streams, 100)
	// EventsPerStream is how many events each stream sends at most.
	EventsPerStream int
	// Duration, when set, stops sending new batches after this long; the
	// load then waits for the acknowledgements of what was sent.
	Duration    time.Duration
	BatchEvents int // default 512, as the agent
	Window      int // unacknowledged batches per stream, default 16 (the agent sender's MaxUnacked)
	// AlertEvery makes every AlertEvery-th event an alerting one (default
	// 100: 99% excluded system identities).
	AlertEvery int
	Mix        Mix
}

func (c Config) withDefaults() Config {
	if c.Clusters <= 0 {
		c.Clusters = min(c.Streams, 100)
	}
	if c.BatchEvents <= 0 {
		c.BatchEvents = 512
	}
	if c.Window <= 0 {
		c.Window = 16
	}
	if c.AlertEvery <= 0 {
		c.AlertEvery = 100
	}
	return c
}

// Result is what a load achieved.
type Result struct {
	Events   int64         // events acknowledged
	Alerting int64         // of which alerting
	Elapsed  time.Duration // first batch sent to last acknowledgement
}

// PerSecond is the acknowledged events per second.
func (r Result) PerSecond() float64 { return float64(r.Events) / r.Elapsed.Seconds() }

// Run connects every stream (Hello, Welcome), then starts them all at once
// and returns when every batch is acknowledged, ctx ends or a stream fails.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	if cfg.Streams <= 0 || cfg.EventsPerStream <= 0 || cfg.Creds == nil || cfg.Target == "" {
		return Result{}, errors.New("loadgen: Target, Creds, Streams and EventsPerStream are required")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	streams := make([]*stream, cfg.Streams)
	var connect errgroup.Group
	connect.SetLimit(32)
	for i := range streams {
		connect.Go(func() error {
			s, err := dial(ctx, cfg, i)
			streams[i] = s
			return err
		})
	}
	err := connect.Wait()
	defer func() {
		for _, s := range streams {
			if s != nil {
				s.conn.Close()
			}
		}
	}()
	if err != nil {
		return Result{}, err
	}

	var res Result
	var events, alerting atomic.Int64
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range streams {
		g.Go(func() error {
			n, a, err := s.send(gctx, cfg)
			events.Add(n)
			alerting.Add(a)
			return err
		})
	}
	err = g.Wait()
	res.Elapsed = time.Since(start)
	res.Events, res.Alerting = events.Load(), alerting.Load()
	return res, err
}

type stream struct {
	id      int
	cluster string
	conn    *grpc.ClientConn
	rpc     grpc.ClientStream
}

func dial(ctx context.Context, cfg Config, i int) (*stream, error) {
	cluster := "bench-" + strconv.Itoa(i%cfg.Clusters)
	creds, err := cfg.Creds(cluster)
	if err != nil {
		return nil, fmt.Errorf("credentials of %s: %w", cluster, err)
	}
	conn, err := grpc.NewClient(cfg.Target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connect stream %d to %s: %w", i, cfg.Target, err)
	}
	s := &stream{id: i, cluster: cluster, conn: conn}
	rpc, err := conn.NewStream(ctx, &tokenwatchv1.AuditStreamService_ServiceDesc.Streams[0],
		tokenwatchv1.AuditStreamService_Stream_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return s, fmt.Errorf("open stream %d: %w", i, err)
	}
	s.rpc = rpc
	hello := &tokenwatchv1.Hello{Cluster: cluster, Node: "node-" + strconv.Itoa(i), AgentVersion: "loadgen",
		SessionId: fmt.Sprintf("loadgen-%d-%d", time.Now().UnixNano(), i), MaxBatchEvents: uint32(cfg.BatchEvents)}
	if err := rpc.SendMsg(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: hello}}); err != nil {
		return s, fmt.Errorf("stream %d: send hello: %w", i, err)
	}
	resp := new(tokenwatchv1.StreamResponse)
	if err := rpc.RecvMsg(resp); err != nil {
		return s, fmt.Errorf("stream %d: await welcome: %w", i, err)
	}
	if resp.GetWelcome() == nil {
		return s, fmt.Errorf("stream %d: first response is %T, want a Welcome", i, resp.GetMsg())
	}
	return s, nil
}

// send sends the stream's batches, at most Window unacknowledged, and
// returns the events and alerting events acknowledged.
func (s *stream) send(ctx context.Context, cfg Config) (int64, int64, error) {
	nb := uint64((cfg.EventsPerStream + cfg.BatchEvents - 1) / cfg.BatchEvents)
	a := &acks{ch: make(chan struct{}, 1), errc: make(chan error, 1)}
	go a.read(s.rpc, nb)
	enc := newEncoder(cfg, s.id)
	sent, alerts := 0, 0
	var deadline <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Duration)
		defer t.Stop()
		deadline = t.C
	}
	var last uint64
sending:
	for seq := uint64(1); seq <= nb; seq++ {
		select {
		case <-deadline:
			break sending
		default:
		}
		room := func(acked uint64) bool { return seq-acked <= uint64(cfg.Window) }
		if err := a.wait(ctx, s.id, room, false); err != nil {
			return 0, 0, err
		}
		n := min(cfg.BatchEvents, cfg.EventsPerStream-sent)
		msg, na := enc.batch(seq, sent, n)
		sent += n
		alerts += na
		if err := s.rpc.SendMsg(msg); err != nil {
			return 0, 0, fmt.Errorf("stream %d: send batch %d: %w", s.id, seq, err)
		}
		last = seq
	}
	// Wait for the acknowledgement of the last batch sent.
	if err := a.wait(ctx, s.id, func(acked uint64) bool { return acked >= last }, true); err != nil {
		return 0, 0, err
	}
	_ = s.rpc.CloseSend()
	return int64(sent), int64(alerts), nil
}

// acks follows a stream's acknowledgements.
type acks struct {
	mu    sync.Mutex
	acked uint64        // the highest sequence acknowledged
	ch    chan struct{} // a new acknowledgement (capacity 1)
	errc  chan error    // read's end: nil once nb batches are acknowledged
}

// read receives the stream's responses until nb batches are acknowledged
// or the stream fails.
func (a *acks) read(rpc grpc.ClientStream, nb uint64) {
	for {
		resp := new(tokenwatchv1.StreamResponse)
		if err := rpc.RecvMsg(resp); err != nil {
			a.errc <- err
			return
		}
		ack := resp.GetAck()
		if ack == nil {
			continue
		}
		a.mu.Lock()
		a.acked = max(a.acked, ack.Seq)
		done := a.acked >= nb
		a.mu.Unlock()
		select {
		case a.ch <- struct{}{}:
		default:
		}
		if done {
			a.errc <- nil
			return
		}
	}
}

// wait blocks until ok(the highest acknowledged sequence). The end of read
// is an error, unless endOK and read ended because everything was
// acknowledged.
func (a *acks) wait(ctx context.Context, id int, ok func(acked uint64) bool, endOK bool) error {
	for {
		a.mu.Lock()
		done := ok(a.acked)
		a.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-a.ch:
		case err := <-a.errc:
			if err != nil || !endOK {
				return fmt.Errorf("stream %d: %w", id, orEOF(err))
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func orEOF(err error) error {
	if err == nil {
		return errors.New("stream ended before every batch was acknowledged")
	}
	return err
}

// encoder writes a stream's batches as encoded StreamRequest messages
// without marshalling events: each event of the cycle is encoded once with
// a fixed-width audit ID whose counter digits are rewritten in place, so the
// generator spends its CPU on copying bytes, not on protobuf, and leaves the
// cores to the server under test.
type encoder struct {
	cfg    Config
	events [][]byte // encoded TokenEvents of one alert cycle
	digits []int    // offset of the counter digits in each
	body   []byte
}

const counterDigits = 12

func newEncoder(cfg Config, id int) *encoder {
	e := &encoder{cfg: cfg}
	for k := range cfg.AlertEvery {
		var tmpl *tokenwatchv1.TokenEvent
		if k == cfg.AlertEvery-1 {
			tmpl = cfg.Mix.Alerting[id%len(cfg.Mix.Alerting)]
		} else {
			tmpl = cfg.Mix.Excluded[(id+k)%len(cfg.Mix.Excluded)]
		}
		ev := proto.CloneOf(tmpl)
		prefix := "lg-" + strconv.Itoa(id) + "-"
		ev.AuditId = prefix + strings.Repeat("0", counterDigits)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			panic(err) // a generated event always encodes
		}
		at := bytes.Index(b, []byte(ev.AuditId))
		e.events = append(e.events, b)
		e.digits = append(e.digits, at+len(prefix))
	}
	return e
}

// batch returns the encoded StreamRequest holding Batch{seq} with events
// first..first+n-1 and the number of alerting events in it.
func (e *encoder) batch(seq uint64, first, n int) (raw, int) {
	body := e.body[:0]
	body = protowire.AppendTag(body, 1, protowire.VarintType)
	body = protowire.AppendVarint(body, seq)
	alerts := 0
	for k := first; k < first+n; k++ {
		c := k % e.cfg.AlertEvery
		if c == e.cfg.AlertEvery-1 {
			alerts++
		}
		ev, at := e.events[c], e.digits[c]
		v := k
		for i := at + counterDigits - 1; i >= at; i-- {
			ev[i] = byte('0' + v%10)
			v /= 10
		}
		body = protowire.AppendTag(body, 2, protowire.BytesType)
		body = protowire.AppendBytes(body, ev)
	}
	e.body = body
	// A fresh buffer each time: gRPC may still hold the last one after
	// SendMsg returns.
	buf := make([]byte, 0, len(body)+16)
	buf = protowire.AppendTag(buf, 2, protowire.BytesType) // StreamRequest.batch
	buf = protowire.AppendBytes(buf, body)
	return raw(buf), alerts
}

// raw is an encoded message that rawCodec sends as is.
type raw []byte

// rawCodec sends raw as is and protobuf messages as protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if r, ok := v.(raw); ok {
		return r, nil
	}
	return proto.Marshal(v.(proto.Message))
}

func (rawCodec) Unmarshal(data []byte, v any) error { return proto.Unmarshal(data, v.(proto.Message)) }

func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}
