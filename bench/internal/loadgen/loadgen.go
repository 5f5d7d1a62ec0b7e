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
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

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
	Window      int // unacknowledged batches per stream, default 8
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
		c.Window = 8
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
	rpc     grpc.BidiStreamingClient[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]
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
	rpc, err := tokenwatchv1.NewAuditStreamServiceClient(conn).Stream(ctx)
	if err != nil {
		return s, fmt.Errorf("open stream %d: %w", i, err)
	}
	s.rpc = rpc
	hello := &tokenwatchv1.Hello{Cluster: cluster, Node: "node-" + strconv.Itoa(i), AgentVersion: "loadgen",
		SessionId: fmt.Sprintf("loadgen-%d-%d", time.Now().UnixNano(), i), MaxBatchEvents: uint32(cfg.BatchEvents)}
	if err := rpc.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: hello}}); err != nil {
		return s, fmt.Errorf("stream %d: send hello: %w", i, err)
	}
	resp, err := rpc.Recv()
	if err != nil {
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
	nb := (cfg.EventsPerStream + cfg.BatchEvents - 1) / cfg.BatchEvents
	var (
		mu      sync.Mutex
		acked   uint64
		ackedCh = make(chan struct{}, 1)
		recvErr = make(chan error, 1)
	)
	go func() {
		for {
			resp, err := s.rpc.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if a := resp.GetAck(); a != nil {
				mu.Lock()
				acked = max(acked, a.Seq)
				done := acked >= uint64(nb)
				mu.Unlock()
				select {
				case ackedCh <- struct{}{}:
				default:
				}
				if done {
					recvErr <- nil
					return
				}
			}
		}
	}()
	sent, alerts := 0, 0
	var deadline <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Duration)
		defer t.Stop()
		deadline = t.C
	}
	var last uint64
sending:
	for seq := uint64(1); seq <= uint64(nb); seq++ {
		select {
		case <-deadline:
			break sending
		default:
		}
		for {
			mu.Lock()
			room := seq-acked <= uint64(cfg.Window)
			mu.Unlock()
			if room {
				break
			}
			select {
			case <-ackedCh:
			case err := <-recvErr:
				return 0, 0, fmt.Errorf("stream %d: %w", s.id, orEOF(err))
			case <-ctx.Done():
				return 0, 0, ctx.Err()
			}
		}
		n := min(cfg.BatchEvents, cfg.EventsPerStream-sent)
		b := &tokenwatchv1.Batch{Seq: seq, Events: make([]*tokenwatchv1.TokenEvent, n)}
		a := 0
		for j := range b.Events {
			k := sent + j
			var tmpl *tokenwatchv1.TokenEvent
			if k%cfg.AlertEvery == cfg.AlertEvery-1 {
				tmpl = cfg.Mix.Alerting[k%len(cfg.Mix.Alerting)]
				a++
			} else {
				tmpl = cfg.Mix.Excluded[k%len(cfg.Mix.Excluded)]
			}
			b.Events[j] = withID(tmpl, "lg-"+strconv.Itoa(s.id)+"-"+strconv.Itoa(k))
		}
		sent += n
		alerts += a
		if err := s.rpc.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: b}}); err != nil {
			return 0, 0, fmt.Errorf("stream %d: send batch %d: %w", s.id, seq, err)
		}
		last = seq
	}
	// Wait for the acknowledgement of the last batch sent.
	for {
		mu.Lock()
		done := acked >= last
		mu.Unlock()
		if done {
			break
		}
		select {
		case <-ackedCh:
		case err := <-recvErr:
			if err != nil {
				return 0, 0, fmt.Errorf("stream %d: %w", s.id, orEOF(err))
			}
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	_ = s.rpc.CloseSend()
	return int64(sent), int64(alerts), nil
}

func orEOF(err error) error {
	if err == nil {
		return errors.New("stream ended before every batch was acknowledged")
	}
	return err
}

// withID returns a shallow copy of t with another audit ID: sub-messages are
// shared, which is safe because they are only read (marshalled).
func withID(t *tokenwatchv1.TokenEvent, id string) *tokenwatchv1.TokenEvent {
	return &tokenwatchv1.TokenEvent{
		AuditId: id, Stage: t.Stage, RequestReceivedTimestamp: t.RequestReceivedTimestamp,
		StageTimestamp: t.StageTimestamp, Verb: t.Verb, RequestUri: t.RequestUri, ObjectRef: t.ObjectRef,
		User: t.User, ImpersonatedUser: t.ImpersonatedUser, SourceIps: t.SourceIps, UserAgent: t.UserAgent,
		ResponseStatus: t.ResponseStatus, Annotations: t.Annotations, RequestSpec: t.RequestSpec, Level: t.Level,
		Source: t.Source,
	}
}
