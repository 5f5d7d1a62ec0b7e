package ingest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/silence"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	"github.com/tokenwatch/tokenwatch/internal/version"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// DefaultHeartbeatInterval is what the Welcome asks agents for.
const DefaultHeartbeatInterval = 10 * time.Second

// Processor records batches and heartbeats; *pipeline.Pipeline is one.
type Processor interface {
	Process(ctx context.Context, b pipeline.Batch) (pipeline.Result, error)
	Heard(cluster, node string, lastGrowth time.Time)
}

// Screener is implemented by Processors that judge an event by its subject
// before it is decoded or converted (*pipeline.Pipeline does): the codec
// judges encoded batch events with it, prepare those the codec did not;
// events it drops are counted in the batch, never converted, and those it
// keeps reach Process with their verdict. A Processor without it sees every
// event and judges it itself. Screen must not retain s or its strings.
type Screener interface {
	Screen(s *rule.Subject) rule.Verdict
}

var _ Screener = (*pipeline.Pipeline)(nil)

// BeatProcessor is implemented by Processors that take what a heartbeat
// says of the agent's audit log (*pipeline.Pipeline does); others get
// Heard with its last growth only.
type BeatProcessor interface {
	HeardBeat(cluster, node string, b silence.Beat)
}

var _ BeatProcessor = (*pipeline.Pipeline)(nil)

// Options configure a Server.
type Options struct {
	Processor Processor
	// Insecure takes the cluster name claimed in the Hello as is. Otherwise
	// it comes from the peer certificate's spiffe://<TrustDomain>/cluster/<name>.
	Insecure    bool
	TrustDomain string
	// HeartbeatInterval is sent in the Welcome; DefaultHeartbeatInterval when 0.
	HeartbeatInterval time.Duration
	// MaxBufferedBytes is the shared budget of received data held by all
	// streams together, beyond each stream's own StreamShareBytes
	// (DefaultMaxBufferedBytes when 0); see memory.go.
	MaxBufferedBytes int64
	// MaxPendingWatches bounds the watches a lineage stream may have
	// waiting to be sent after its first (full) set
	// (DefaultMaxPendingWatches when 0): a stream further behind is ended.
	MaxPendingWatches int
	Logger            *slog.Logger
	Registerer        prometheus.Registerer
}

// Server implements AuditStreamService.
type Server struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer

	opts   Options
	logger *slog.Logger
	health *health.Server
	m      *metrics
	budget *budget
	nodes  nodes // live agents' nodes

	refusals refusals // refused streams' log

	// Lineage: the Processor's side (nil without it), its configuration
	// read at start, the lineage streams, and the streams' writers, which
	// may outlive their handler by one Send, and receivers, which outlive
	// it when EndStreams ended it (Wait).
	lin     LineageProcessor
	linCfg  lineage.Config
	fleet   *fleet
	writers sync.WaitGroup

	// closing is set under a write lock of drain; batches run under a read
	// lock, so Drain waits for every batch in flight to be committed and
	// acknowledged.
	drain   sync.RWMutex
	closing atomic.Bool

	// ending is closed by EndStreams: every stream handler returns.
	ending  chan struct{}
	endOnce sync.Once

	// queued, when set (tests), is called each time the receiver has handed
	// a message to the committer.
	queued func()
}

var _ tokenwatchv1.AuditStreamServiceServer = (*Server)(nil)

// New returns a Server.
func New(opts Options) *Server {
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.MaxPendingWatches <= 0 {
		opts.MaxPendingWatches = DefaultMaxPendingWatches
	}
	b := newBudget(opts.MaxBufferedBytes)
	f := newFleet()
	s := &Server{opts: opts, logger: logger, health: health.NewServer(), m: newMetrics(opts.Registerer, b, f), budget: b, fleet: f, ending: make(chan struct{})}
	f.m = s.m
	if lp, ok := opts.Processor.(LineageProcessor); ok {
		s.lin, s.linCfg = lp, lp.LineageConfig()
	}
	s.health.SetServingStatus(tokenwatchv1.AuditStreamService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(connectedNodes{n: &s.nodes})
	}
	return s
}

// ServerOptions returns the gRPC server options the Server wants: a stats
// handler that tells each stream the size of the messages it receives (the
// memory budget reserves about that much before the next read) and, with a
// Processor that is a Screener, a codec that screens batch events before
// decoding them (see codec); with lineage enabled it keeps the possible
// chains and token uses among the excluded events.
func (s *Server) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.StatsHandler(wireSizes{})}
	if fs, ok := s.opts.Processor.(Screener); ok {
		c := newCodec(fs)
		c.chains = s.linCfg.Enabled
		opts = append(opts, grpc.ForceServerCodecV2(c))
	}
	return opts
}

// Register registers the stream service and the health service on g.
func (s *Server) Register(g *grpc.Server) {
	tokenwatchv1.RegisterAuditStreamServiceServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
}

// Wait waits for the streams' writers and receivers to stop: call it once
// the gRPC server has stopped (each ends with its stream).
func (s *Server) Wait() {
	s.writers.Wait()
}

// Drain stops accepting batches (new ones fail with Unavailable, so agents
// resend them elsewhere or later) and waits for those in flight to finish.
// It also marks the health service NOT_SERVING. It is safe to call twice.
func (s *Server) Drain() {
	s.health.Shutdown()
	s.drain.Lock()
	s.closing.Store(true)
	s.drain.Unlock()
}

// EndStreams drains the Server (Drain) and then ends every stream: each
// handler returns Unavailable, so that gRPC sends the status after the
// acks the stream sent, and its receiver and committer stop once gRPC has
// ended the stream. Every batch committed has its ack sent before its
// stream's status: a graceful stop of the gRPC server (GracefulStop)
// then delivers both. It is safe to call twice.
func (s *Server) EndStreams() {
	s.Drain()
	s.endOnce.Do(func() { close(s.ending) })
}

// Stream serves one agent session.
func (s *Server) Stream(stream tokenwatchv1.AuditStreamService_StreamServer) error {
	ctx := stream.Context()
	hello, err := s.readHello(ctx, stream)
	if err != nil {
		return err
	}
	cluster, err := s.bindCluster(ctx, hello)
	if err != nil {
		return err
	}
	src := detect.Source{Cluster: cluster, Node: hello.GetNode()}
	log := s.logger.With("cluster", cluster, "node", src.Node, "session", hello.GetSessionId(), "replay", hello.GetReplay())
	if !hello.GetReplay() {
		release, err := s.admitNode(src, hello.GetSessionId(), log)
		if err != nil {
			return err
		}
		defer release()
	}
	lin := s.lin != nil && s.linCfg.Enabled && slices.Contains(hello.GetFeatures(), FeatureLineage)
	welcome := &tokenwatchv1.Welcome{
		Cluster:             cluster,
		AggregatorVersion:   version.Version,
		HeartbeatIntervalMs: uint32(s.opts.HeartbeatInterval / time.Millisecond),
	}
	if lin {
		welcome.Lineage = lineageSettings(s.linCfg)
	}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	log.Info("agent connected", "agent_version", hello.GetAgentVersion(), "lineage", lin)
	s.m.streams.Inc()
	defer s.m.streams.Dec()
	out := newOutbox(stream, s.opts.MaxPendingWatches, s.m)
	s.writers.Go(out.run)
	defer out.close()
	defer s.startLineage(ctx, out, hello, src, lin, log)()
	if !hello.GetReplay() {
		s.opts.Processor.Heard(src.Cluster, src.Node, time.Time{})
	}
	return s.serve(ctx, stream, src, hello.GetReplay(), s.budget.stream(cluster), out, log)
}

// startLineage starts a welcomed stream's lineage: a stream with lineage
// (lin) joins the fleet, receiving the whole watch set first; an agent
// that does not declare the feature is reported and receives no watch
// update (it delivers token creates as before). It returns what to do
// when the stream ends.
func (s *Server) startLineage(ctx context.Context, out *outbox, hello *tokenwatchv1.Hello, src detect.Source, lin bool, log *slog.Logger) (stop func()) {
	switch {
	case lin:
		return s.fleet.join(out, s.lin.Watches)
	case s.lin != nil && !slices.Contains(hello.GetFeatures(), FeatureLineage):
		if err := s.lin.LineageUnsupported(ctx, src, hello.GetAgentVersion()); err != nil {
			log.Warn("agent without lineage support not recorded", "agent_version", hello.GetAgentVersion(), "err", err)
		}
	}
	return func() {}
}

// readHello receives a stream's first message and returns its Hello, or
// refuses the stream when that is not a Hello with a valid node name.
func (s *Server) readHello(ctx context.Context, stream tokenwatchv1.AuditStreamService_StreamServer) (*tokenwatchv1.Hello, error) {
	first, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	hello := first.GetHello()
	if hello == nil {
		s.refuse(ctx, "no_hello", "agent stream refused: its first message is not a Hello")
		return nil, status.Error(codes.InvalidArgument, "the first message of a stream must be a Hello")
	}
	if reason := checkNode(hello.GetNode()); reason != "" {
		s.refuse(ctx, reason, "agent stream refused: its Hello has no valid node name")
		return nil, status.Errorf(codes.InvalidArgument, "hello: node %.64q is not a node name: 1 to %d characters of A-Z a-z 0-9 . _ -", hello.GetNode(), MaxNodeNameLen)
	}
	return hello, nil
}

// serve runs a welcomed stream until the agent closes it, it fails or
// EndStreams ends it; it closes mem once the stream's receiver and
// committer have stopped (after it returned, when EndStreams ended it).
//
// The stream is served in two stages: a receiver goroutine receives, orders
// and screens the next messages while a committer goroutine processes
// the previous batch (its commit waits for an fsync), so one agent's
// throughput is bounded by the slower stage, not their sum. Batches are
// processed one at a time in seq order, and each is acknowledged only
// once Process recorded it durably: acks go out in order, and after a
// batch that was not recorded nothing more is processed or
// acknowledged. Only the receiver calls Recv (interceptors rely on
// it); a committer's failure, or a failure of the stream's outbox (out),
// which sends the acks and the watch updates, ends the stream at once: serve
// returns, and its receiver and committer stop after it.
//
// Every message is read within the fleet-wide memory budget (memory.go):
// the receiver reserves about the size of its previous message before
// it reads the next one, charges each screened batch until its commit,
// and waits, reading nothing, while the budget is spent.
func (s *Server) serve(ctx context.Context, stream tokenwatchv1.AuditStreamService_StreamServer, src detect.Source, replay bool, mem *streamBudget, out *outbox, log *slog.Logger) error {
	work := make(chan received, recvAhead)
	failed := make(chan struct{})
	var commitErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		if commitErr = s.commitLoop(ctx, out, src, replay, work, mem, log); commitErr != nil {
			close(failed)
		}
	})
	done := make(chan error, 1)
	s.writers.Go(func() {
		err := s.receive(ctx, stream, src, work, failed, out.gone, mem)
		close(work)
		wg.Wait()
		mem.close() // the receiver and the committer have stopped
		done <- err
	})
	var err error
	select {
	case err = <-done:
	case <-s.ending:
		// Drained: this stream's committed batches have their acks sent,
		// and no more is committed. Returning ends the stream (and so its
		// receiver and committer) after them.
		return status.Error(codes.Unavailable, "aggregator shutting down")
	case <-failed:
		// A batch was not recorded, so nothing more is: end the stream
		// now, not at the agent's next message.
		return commitErr
	case <-out.gone:
		// Nothing more can be sent (a failed Send, or watch updates the
		// agent did not read in time): end the stream now too.
		return outboxEnded(out, log)
	}
	if commitErr != nil {
		return commitErr
	}
	select {
	case <-out.gone:
		return outboxEnded(out, log)
	default:
	}
	if errors.Is(err, io.EOF) {
		log.Info("agent disconnected")
		return nil
	}
	return err
}

// outboxEnded returns the error that ended a stream's outbox, and logs the
// case the agent should hear of.
func outboxEnded(out *outbox, log *slog.Logger) error {
	err := out.stopped()
	if errors.Is(err, errWatchOverflow) {
		log.Warn("agent stream ended: its lineage watch updates backed up")
	}
	return err
}

// receive reads, orders and screens a stream's messages and hands them to
// the committer through work, until Recv fails (io.EOF when the agent closed
// the stream), a message is refused, or failed or gone is closed (then it
// returns nil: the committer or the outbox holds the error).
func (s *Server) receive(ctx context.Context, stream tokenwatchv1.AuditStreamService_StreamServer, src detect.Source, work chan<- received, failed, gone <-chan struct{}, mem *streamBudget) error {
	var last uint64
	for {
		reserved, err := mem.acquire(ctx, int64(lastWireSize(ctx)))
		if err != nil {
			return status.FromContextError(err).Err()
		}
		in := &inbound{StreamRequest: new(tokenwatchv1.StreamRequest)}
		err = stream.RecvMsg(in)
		mem.release(reserved)
		if err != nil {
			return err
		}
		r, err := s.accept(ctx, src, in, &last, mem)
		if err != nil {
			return err
		}
		select {
		case <-failed:
			return nil
		case <-gone:
			return nil
		default:
		}
		select {
		case work <- r:
		case <-failed:
			return nil
		case <-gone:
			return nil
		}
		if s.queued != nil {
			s.queued()
		}
	}
}

// accept checks one message after the Hello and makes it the committer's:
// a batch must follow the one numbered *last, which it then advances, and is
// screened (with the codec's verdicts, when it gave them) and charged to the
// memory budget; a heartbeat passes as it is.
func (s *Server) accept(ctx context.Context, src detect.Source, in *inbound, last *uint64, mem *streamBudget) (received, error) {
	var r received
	switch msg := in.GetMsg().(type) {
	case *tokenwatchv1.StreamRequest_Batch:
		b := msg.Batch
		if b.GetSeq() != *last+1 {
			s.refuse(ctx, "bad_seq", "agent stream ended: batch out of order", "cluster", src.Cluster, "node", src.Node)
			return r, status.Errorf(codes.InvalidArgument, "batch seq %d out of order: want %d", b.GetSeq(), *last+1)
		}
		*last = b.GetSeq()
		r.batch = s.prepare(src, b, in.screened)
		var err error
		if r.batch.charged, err = mem.acquire(ctx, r.batch.cost); err != nil {
			return r, status.FromContextError(err).Err()
		}
	case *tokenwatchv1.StreamRequest_Heartbeat:
		r.heartbeat = msg.Heartbeat
	case *tokenwatchv1.StreamRequest_Hello:
		s.refuse(ctx, "second_hello", "agent stream ended: a second Hello", "cluster", src.Cluster, "node", src.Node)
		return r, status.Error(codes.InvalidArgument, "hello is allowed only as the first message")
	default:
		return r, status.Error(codes.InvalidArgument, "empty stream message")
	}
	return r, nil
}

// recvAhead is how many received messages may wait for the committer
// besides the one it works on and the one the receiver holds: each is a
// screened batch (its kept events only), charged to the memory budget. It covers
// an agent's window of unacknowledged batches (the agent's sender keeps 16),
// so that the receiver keeps reading while a commit waits for its fsync.
const recvAhead = 16

// maxCoalesce bounds how many waiting batches one commit takes together.
const maxCoalesce = 64

// received is one message of a stream, screened; exactly one field is set.
type received struct {
	batch     *prepared
	heartbeat *tokenwatchv1.Heartbeat
}

// commitLoop processes and acknowledges the batches and heartbeats of work
// in order until work is closed or a batch fails, whose error it returns.
// Batches that are already waiting when the committer takes one are
// processed with it as one (their events in seq order, one commit, one
// fsync) and acknowledged by one cumulative Ack of the last: an agent whose
// batches arrive faster than a commit completes pays one fsync per group,
// not one per batch.
func (s *Server) commitLoop(ctx context.Context, out acker, src detect.Source, replay bool, work <-chan received, mem *streamBudget, log *slog.Logger) error {
	var next *received
	for {
		var r received
		if next != nil {
			r, next = *next, nil
		} else {
			var ok bool
			if r, ok = <-work; !ok {
				return nil
			}
		}
		if r.batch != nil {
			group := r.batch
		more:
			for n := 1; n < maxCoalesce; n++ {
				select {
				case w, ok := <-work:
					if !ok {
						break more
					}
					if w.batch == nil {
						next = &w
						break more
					}
					group = merge(group, w.batch)
				default:
					break more
				}
			}
			group.batch.Replay = replay
			if err := s.commit(ctx, out, group, mem, log); err != nil {
				return err
			}
			continue
		}
		s.m.heartbeats.Inc()
		if !replay {
			b := beatOf(r.heartbeat)
			if bp, ok := s.opts.Processor.(BeatProcessor); ok {
				bp.HeardBeat(src.Cluster, src.Node, b)
			} else {
				s.opts.Processor.Heard(src.Cluster, src.Node, b.LastGrowth)
			}
		}
	}
}

// beatOf is what hb says of the agent's audit log.
func beatOf(hb *tokenwatchv1.Heartbeat) silence.Beat {
	var b silence.Beat
	if hb.GetLastGrowth() != nil {
		b.LastGrowth = hb.GetLastGrowth().AsTime()
	}
	switch hb.GetFileState() {
	case tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_PRESENT:
		b.File = silence.FilePresent
	case tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_ABSENT, tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_UNREADABLE:
		b.File, b.FileError = silence.FileMissing, hb.GetFileError()
	}
	b.Policy = silence.Policy{SHA256: hb.GetAuditPolicySha256(), Err: hb.GetAuditPolicyError(), Gaps: hb.GetAuditPolicyGaps()}
	b.RotationBytes = int64(min(hb.GetAuditLogRotationBytes(), math.MaxInt64))
	b.Format, b.FormatErr = silence.FormatJSON, hb.GetAuditLogFormatError()
	if b.FormatErr != "" {
		b.Format = silence.FormatNotJSON
	}
	return b
}

// merge appends b, the batch after a, to a and returns a.
func merge(a, b *prepared) *prepared {
	a.seq = b.seq
	a.events += b.events
	a.batches += b.batches
	a.charged += b.charged
	a.batch.Events = append(a.batch.Events, b.batch.Events...)
	a.batch.Verdicts = append(a.batch.Verdicts, b.batch.Verdicts...)
	a.batch.Encoded = append(a.batch.Encoded, b.batch.Encoded...)
	a.batch.Losses = append(a.batch.Losses, b.batch.Losses...)
	a.batch.Uses = append(a.batch.Uses, b.batch.Uses...)
	a.batch.Counts = append(a.batch.Counts, b.batch.Counts...)
	a.batch.Excluded += b.batch.Excluded
	a.batch.NotMatched += b.batch.NotMatched
	return a
}

// prepared is a screened batch, ready for Process.
type prepared struct {
	seq     uint64 // of the last batch
	events  int    // as received, screened ones included
	batches int    // merged into this one
	batch   pipeline.Batch
	cost    int64 // estimated bytes held until the commit (batchCost)
	charged int64 // of which charged to the memory budget
}

// batch processes one batch and acknowledges it on stream once it is
// recorded.
func (s *Server) batch(ctx context.Context, stream sender, src detect.Source, b *tokenwatchv1.Batch, log *slog.Logger) error {
	return s.commit(ctx, directAck{stream}, s.prepare(src, b, screening{}), nil, log)
}

// acker acknowledges batches on a stream: its outbox, after the watch
// updates queued before.
type acker interface {
	ack(ctx context.Context, seq uint64) error
}

// directAck sends acks on a stream itself.
type directAck struct{ stream sender }

func (d directAck) ack(_ context.Context, seq uint64) error {
	return d.stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: seq}}})
}

// prepare screens b's events, converts those kept and releases b's events.
// Each event is judged once: sc holds what the codec's screening found (the
// counts of the events it screened out, whose slots are nil, and the
// verdicts and encodings of those it decoded, in order), and the others (a
// message the codec left to plain protobuf) are judged here, when the
// Processor is a Screener. Each kept event goes with its encoding as it
// arrived, nil when the codec did not keep it. With lineage enabled an
// excluded event whose user authenticated with a bound token is kept with
// its verdict (a possible chain or use of a watched token, which Process
// decides). Lineage uses and counts are converted as they are.
func (s *Server) prepare(src detect.Source, b *tokenwatchv1.Batch, sc screening) *prepared {
	pb := pipeline.Batch{Source: src, Excluded: sc.excluded, NotMatched: sc.notMatched}
	sr, screens := s.opts.Processor.(Screener)
	judged, raws := sc.kept, sc.raw
	var kept []*tokenwatchv1.TokenEvent
	for _, e := range b.GetEvents() {
		if e == nil {
			continue // screened out by the codec, counted in sc
		}
		var v rule.Verdict
		var raw []byte
		var screened bool
		switch {
		case len(judged) > 0:
			v, screened, judged = judged[0], true, judged[1:]
			raw, raws = raws[0], raws[1:]
		case screens:
			sub := wire.Subject(e)
			v, screened = sr.Screen(&sub), true
		}
		switch {
		case !screened || v.Alerts() || s.linCfg.Enabled && lineageCandidate(v) && protoCredentialJTI(e):
			kept = append(kept, e)
			pb.Events = append(pb.Events, wire.FromProto(e))
			pb.Encoded = append(pb.Encoded, raw)
			if screens {
				pb.Verdicts = append(pb.Verdicts, v)
			}
		case v.Excluded:
			pb.Excluded++
		default:
			pb.NotMatched++
		}
	}
	nEvents := len(b.GetEvents())
	cost := batchCost(kept, pb.Encoded, nEvents) + lineageCost(b)
	prepareLineage(b, &pb)
	// The protobuf forms are garbage now, not held while Process waits.
	b.Events, b.Uses, b.Counts = nil, nil, nil
	for _, l := range b.GetLosses() {
		loss := pipeline.Loss{
			Reason: l.GetReason(), File: l.GetFile(), Offset: l.GetOffset(),
			BytesLost: l.GetBytesLost(), LinesLost: l.GetLinesLost(),
			BytesKnown: l.GetBytesKnown(), LinesKnown: l.GetLinesKnown(),
			Detail: l.GetDetail(),
		}
		if l.GetObserved() != nil {
			loss.Observed = l.GetObserved().AsTime()
		}
		pb.Losses = append(pb.Losses, loss)
	}
	for _, l := range b.GetLosses() {
		cost += 2 * int64(proto.Size(l))
	}
	return &prepared{seq: b.GetSeq(), events: nEvents, batches: 1, batch: pb, cost: cost}
}

// commit processes a prepared batch and acknowledges it once it is
// recorded. The watches the batch changed are queued on every lineage
// stream before the acknowledgement is queued on this one, so each stream
// sends them before any later ack. The batch's memory budget is released
// once Process returned, before the acknowledgement, which an agent that
// does not read could hold up.
func (s *Server) commit(ctx context.Context, out acker, p *prepared, mem *streamBudget, log *slog.Logger) error {
	s.drain.RLock()
	defer s.drain.RUnlock()
	if s.closing.Load() {
		return status.Error(codes.Unavailable, "aggregator shutting down")
	}
	// A batch is committed whole even when the stream goes away meanwhile:
	// the agent resends what it did not see acknowledged and dedupe absorbs it.
	res, err := s.opts.Processor.Process(context.WithoutCancel(ctx), p.batch)
	mem.release(p.charged)
	p.charged = 0
	if err != nil {
		s.m.batchErrors.Inc()
		log.Error("batch not recorded", "seq", p.seq, "err", err)
		return status.Error(codes.Unavailable, "batch not recorded; resend")
	}
	s.fleet.publish(res.WatchAdd, res.WatchRemove)
	s.m.batches.Add(float64(p.batches))
	s.m.events.Add(float64(p.events))
	return out.ack(ctx, p.seq)
}

// bindCluster returns the cluster of the stream.
func (s *Server) bindCluster(ctx context.Context, hello *tokenwatchv1.Hello) (string, error) {
	claimed := hello.GetCluster()
	if s.opts.Insecure {
		if claimed == "" {
			s.refuse(ctx, "no_cluster", "agent stream refused: its Hello names no cluster", "node", hello.GetNode())
			return "", status.Error(codes.InvalidArgument, "hello: cluster is empty")
		}
		return claimed, nil
	}
	cluster, err := tlsconf.ClusterFromContext(ctx, s.opts.TrustDomain)
	if err != nil {
		s.refuse(ctx, "no_identity", "agent stream refused: its certificate carries no usable cluster identity",
			"detail", tlsconf.Reason(err), "trust_domain", s.opts.TrustDomain, "claimed", claimed, "node", hello.GetNode(), "err", err)
		return "", status.Errorf(codes.Unauthenticated, "agent certificate: %v", err)
	}
	if claimed != "" && claimed != cluster {
		s.refuse(ctx, "cluster_mismatch", "agent stream refused: claimed cluster differs from its certificate",
			"claimed", claimed, "certificate", cluster, "node", hello.GetNode())
		return "", status.Errorf(codes.PermissionDenied, "cluster %q does not match the agent certificate's cluster %q", claimed, cluster)
	}
	return cluster, nil
}
