package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Config configures a Sender. Zero durations and sizes take the defaults.
type Config struct {
	// Target is the aggregator's HOST:PORT.
	Target string
	// Credentials secure the connection (TLS, or insecure on loopback).
	Credentials credentials.TransportCredentials
	// Hello is sent first on every stream; MaxBatchEvents is filled in.
	Hello *tokenwatchv1.Hello

	// MaxBatchEvents bounds the events of one batch (default 512).
	MaxBatchEvents int
	// MaxBatchBytes bounds the encoded size of one batch (default 1 MiB);
	// a single larger event travels alone.
	MaxBatchBytes int
	// MaxUnacked bounds the batches held until acknowledged (default 16).
	MaxUnacked int
	// HeartbeatInterval is used unless the Welcome names one (default 10s).
	HeartbeatInterval time.Duration
	// WelcomeTimeout bounds connecting and waiting for the Welcome (default 10s).
	WelcomeTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between attempts (200ms, 30s).
	BackoffMin, BackoffMax time.Duration
	// GiveUpAfter makes Run fail when no stream has been welcomed for this
	// long (since start or since the last stream ended); 0 retries forever.
	GiveUpAfter time.Duration

	// Status, when set, fills the position fields of heartbeats.
	Status func() *tokenwatchv1.Heartbeat
	// OnAck receives the marks of acknowledged items, in order. It is called
	// with the sender's lock held: it must be quick and must not call the Sender.
	OnAck func(mark any)
	// Classify, when set, names why an attempt failed (see Failure); nil
	// or a zero Failure falls back to DefaultClassify.
	Classify func(err error) Failure
	// Lineage, when set, makes the agent declare the "lineage" feature in
	// its Hello and receive the lineage side of each stream (see Lineage).
	Lineage Lineage
	// Logger receives connection events (never event contents).
	Logger *slog.Logger
	// DialOptions are added to the client's options (tests).
	DialOptions []grpc.DialOption
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxBatchEvents, 512)
	def(&c.MaxBatchBytes, 1<<20)
	def(&c.MaxUnacked, 16)
	defd(&c.HeartbeatInterval, 10*time.Second)
	defd(&c.WelcomeTimeout, 10*time.Second)
	defd(&c.BackoffMin, 200*time.Millisecond)
	defd(&c.BackoffMax, 30*time.Second)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.OnAck == nil {
		c.OnAck = func(any) {}
	}
}

// FeatureLineage is the Hello feature of an agent that applies WatchUpdates
// and sends Batch.uses and Batch.counts.
const FeatureLineage = "lineage"

// Lineage is the agent's lineage side of the stream. Its methods are called
// from the session's goroutines in stream order: Welcome once per welcomed
// stream before any of its WatchUpdates, Watch for each WatchUpdate before
// any Ack received after it is processed (so before OnAck reports the
// marks it acknowledges). They must be quick and must not call the Sender.
type Lineage interface {
	// Welcome starts a stream's lineage: settings from the Welcome, nil
	// when the aggregator pushes no watches (lineage is off for the stream:
	// the agent holds no watches and sends no uses or counts).
	Welcome(settings *tokenwatchv1.LineageSettings)
	// Watch applies one WatchUpdate of a stream whose Welcome had settings.
	Watch(u *tokenwatchv1.WatchUpdate)
}

// WatchSetCompleter is a Lineage told when a lineage stream's first Ack
// arrives: the aggregator queues a stream's whole watch set, which may
// take several WatchUpdates (the first resets), before any Ack.
type WatchSetCompleter interface {
	WatchSetComplete()
}

// Items are what one Enqueue queues, in this order within a batch: losses,
// token-create events, lineage uses, use counts.
type Items struct {
	Events []*tokenwatchv1.TokenEvent
	Losses []*tokenwatchv1.LossReport
	Uses   []*tokenwatchv1.LineageEvent
	Counts []*tokenwatchv1.UseCount
}

func (it *Items) empty() bool {
	return len(it.Events)+len(it.Losses)+len(it.Uses)+len(it.Counts) == 0
}

// MaxEventBytes is the largest encoded event worth sending: the
// aggregator refuses messages over 4 MiB by default, and a refused event
// would be re-sent forever. Callers report larger events as losses.
const MaxEventBytes = 3 << 20

// ErrClosed is returned by Enqueue after Close.
var ErrClosed = errors.New("sender closed")

// batch is a unit of acknowledgement.
type batch struct {
	events  []*tokenwatchv1.TokenEvent
	losses  []*tokenwatchv1.LossReport
	uses    []*tokenwatchv1.LineageEvent
	counts  []*tokenwatchv1.UseCount
	bytes   int
	mark    any
	hasMark bool
	full    bool   // takes no more items
	seq     uint64 // on the current stream; 0 = not sent on it
}

// Stats are the sender's counters since New.
type Stats struct {
	EventsSent, EventsAcked   uint64 // EventsSent counts re-sends too
	LossesSent, LossesAcked   uint64
	BatchesSent, BatchesAcked uint64
	UsesSent, UsesAcked       uint64 // lineage uses (Batch.uses)
	CountsSent, CountsAcked   uint64 // lineage use counts (Batch.counts)
	Streams, Reconnects       uint64 // welcomed streams; those after the first
	UnackedEvents             uint64
	Connected                 bool
}

// Sender is the agent's side of the stream. Create it with New, run it with
// Run, feed it with Enqueue.
type Sender struct {
	cfg Config

	mu      sync.Mutex
	queue   []*batch // unacknowledged, in order; queue[:sent] are on the current stream
	sent    int
	nextSeq uint64
	closed  bool
	room    chan struct{} // closed and replaced when the queue shrinks or the sender closes
	wake    chan struct{} // capacity 1: there is something to send
	onWait  func()        // tests: called when EnqueueItems waits for room

	ready                     atomic.Bool
	lineageOn                 atomic.Bool // the current stream's Welcome had LineageSettings
	usesSent, usesAcked       atomic.Uint64
	countsSent, countsAcked   atomic.Uint64
	eventsSent, eventsAcked   atomic.Uint64
	lossesSent, lossesAcked   atomic.Uint64
	batchesSent, batchesAcked atomic.Uint64
	streams                   atomic.Uint64
	unacked                   atomic.Uint64
}

// New checks cfg and returns a Sender. It does not connect.
func New(cfg Config) (*Sender, error) {
	if cfg.Target == "" {
		return nil, errors.New("sender: no target")
	}
	if cfg.Credentials == nil {
		return nil, errors.New("sender: no transport credentials")
	}
	if cfg.Hello == nil {
		return nil, errors.New("sender: no hello")
	}
	cfg.setDefaults()
	hello := proto.Clone(cfg.Hello).(*tokenwatchv1.Hello)
	hello.MaxBatchEvents = uint32(cfg.MaxBatchEvents)
	if cfg.Lineage != nil && !slices.Contains(hello.Features, FeatureLineage) {
		hello.Features = append(hello.Features, FeatureLineage)
	}
	cfg.Hello = hello
	return &Sender{
		cfg:  cfg,
		room: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}, nil
}

// Ready reports whether a stream is open and welcomed.
func (s *Sender) Ready() bool { return s.ready.Load() }

// Stats returns the sender's counters.
func (s *Sender) Stats() Stats {
	st := s.streams.Load()
	var re uint64
	if st > 0 {
		re = st - 1
	}
	return Stats{
		EventsSent: s.eventsSent.Load(), EventsAcked: s.eventsAcked.Load(),
		LossesSent: s.lossesSent.Load(), LossesAcked: s.lossesAcked.Load(),
		BatchesSent: s.batchesSent.Load(), BatchesAcked: s.batchesAcked.Load(),
		UsesSent: s.usesSent.Load(), UsesAcked: s.usesAcked.Load(),
		CountsSent: s.countsSent.Load(), CountsAcked: s.countsAcked.Load(),
		Streams: st, Reconnects: re,
		UnackedEvents: s.unacked.Load(),
		Connected:     s.ready.Load(),
	}
}

// Enqueue queues events and losses, in order, and the mark that OnAck
// reports once they and everything before them are acknowledged. With no
// events and no losses the mark alone moves: at once when nothing is
// unacknowledged. A nil mark is not reported. Enqueue blocks while
// MaxUnacked batches are held; it returns ctx's error when ctx ends first,
// and ErrClosed after Close.
func (s *Sender) Enqueue(ctx context.Context, events []*tokenwatchv1.TokenEvent, losses []*tokenwatchv1.LossReport, mark any) error {
	return s.EnqueueItems(ctx, Items{Events: events, Losses: losses}, mark)
}

// EnqueueItems is Enqueue with lineage uses and counts beside the events
// and losses: they are delivered at least once, like events, and their
// batch's acknowledgement moves the mark alike.
//
// Items with a mark are queued all or nothing: EnqueueItems waits until
// the batches held leave room for all of them, then queues them and the
// mark together, so an ended ctx leaves none of them queued. The mark is a
// checkpoint: an item sent without it would be sent again by an agent
// restarted from the mark before. The bound: items that would not fit even
// in MaxUnacked empty batches (more than MaxUnacked × MaxBatchEvents items
// or about MaxUnacked × MaxBatchBytes encoded) are queued as room frees,
// and an ended ctx may leave some of them queued without the mark. Items
// without a mark are queued as room frees, too.
func (s *Sender) EnqueueItems(ctx context.Context, it Items, mark any) error {
	p := pending{it: it, sizes: it.sizes()}
	whole := mark != nil && s.newBatches(nil, p.sizes, len(it.Losses)) <= s.cfg.MaxUnacked
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		if p.it.empty() {
			s.placeMark(mark)
			s.mu.Unlock()
			return nil
		}
		if (whole && !s.roomFor(&p)) || (!whole && !s.fillSome(&p)) {
			room := s.room
			s.mu.Unlock()
			if s.onWait != nil {
				s.onWait()
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-room:
			}
			continue
		}
		if whole {
			s.fillAll(&p)
		}
		done := p.it.empty()
		if done && mark != nil {
			s.queue[len(s.queue)-1].mark, s.queue[len(s.queue)-1].hasMark = mark, true
		}
		s.mu.Unlock()
		s.signal()
		if done {
			return nil
		}
	}
}

// pending is what is left to queue of one EnqueueItems call, with the
// encoded sizes of its items in queueing order.
type pending struct {
	it    Items
	sizes []int
}

// sizes returns the encoded sizes of it's items in queueing order: losses,
// events, uses, counts.
func (it *Items) sizes() []int {
	n := make([]int, 0, len(it.Losses)+len(it.Events)+len(it.Uses)+len(it.Counts))
	for _, l := range it.Losses {
		n = append(n, proto.Size(l))
	}
	for _, e := range it.Events {
		n = append(n, proto.Size(e))
	}
	for _, u := range it.Uses {
		n = append(n, proto.Size(u))
	}
	for _, c := range it.Counts {
		n = append(n, proto.Size(c))
	}
	return n
}

// fillSome moves what fits of p into the open batch, or into a new one
// when there is room, and reports whether there was a batch to fill; a
// batch left with items to spare takes no more. Called with mu held.
func (s *Sender) fillSome(p *pending) bool {
	b := s.openBatch()
	if b == nil {
		return false
	}
	s.fill(b, p)
	if !p.it.empty() {
		b.full = true
	}
	return true
}

// fillAll moves all of p into the open batch and new ones; roomFor(p)
// must be true. Called with mu held.
func (s *Sender) fillAll(p *pending) {
	for !p.it.empty() {
		if !s.fillSome(p) {
			return
		}
	}
}

// roomFor reports whether the batches held leave room for all of p now,
// packed as fillAll packs them. Called with mu held.
func (s *Sender) roomFor(p *pending) bool {
	var open *load
	if b := s.openable(); b != nil {
		l := b.load()
		open = &l
	}
	return s.newBatches(open, p.sizes, len(p.it.Losses)) <= s.cfg.MaxUnacked-len(s.queue)
}

// newBatches counts the new batches that items of sizes (the first
// losses of them losses) need after topping up a batch loaded as open
// (nil: none can take more), packed as fill packs them.
func (s *Sender) newBatches(open *load, sizes []int, losses int) int {
	var l load
	n := 0
	if open != nil {
		l = *open
	}
	for i, size := range sizes {
		if (open == nil && i == 0) || !s.takes(l, size) {
			l = load{}
			n++
		}
		l.bytes += size
		if i < losses {
			l.losses++
		} else {
			l.items++
		}
	}
	return n
}

// fill moves what fits of p into b, in order: losses, events, uses,
// counts. Called with mu held.
func (s *Sender) fill(b *batch, p *pending) {
	for len(p.sizes) > 0 && s.fits(b, p.sizes[0]) {
		b.bytes += p.sizes[0]
		p.sizes = p.sizes[1:]
		it := &p.it
		switch {
		case len(it.Losses) > 0:
			b.losses = append(b.losses, it.Losses[0])
			it.Losses = it.Losses[1:]
		case len(it.Events) > 0:
			b.events = append(b.events, it.Events[0])
			s.unacked.Add(1)
			it.Events = it.Events[1:]
		case len(it.Uses) > 0:
			b.uses = append(b.uses, it.Uses[0])
			it.Uses = it.Uses[1:]
		default:
			b.counts = append(b.counts, it.Counts[0])
			it.Counts = it.Counts[1:]
		}
	}
}

// openBatch returns a batch that can take more items: the last one if it
// has not been sent on the current stream and has room, else a new one, or
// nil when MaxUnacked batches are held. Called with mu held.
func (s *Sender) openBatch() *batch {
	if b := s.openable(); b != nil {
		return b
	}
	if len(s.queue) >= s.cfg.MaxUnacked {
		return nil
	}
	b := &batch{}
	s.queue = append(s.queue, b)
	return b
}

// openable returns the last batch when it has not been sent on the
// current stream and can take more items, else nil. Called with mu held.
func (s *Sender) openable() *batch {
	if n := len(s.queue); n > s.sent && n > 0 {
		if b := s.queue[n-1]; !b.full && b.items() < s.cfg.MaxBatchEvents && b.bytes < s.cfg.MaxBatchBytes {
			return b
		}
	}
	return nil
}

// items counts the entries of b that MaxBatchEvents bounds: events, uses
// and counts (a lineage-aware aggregator may count each as an event).
func (b *batch) items() int { return len(b.events) + len(b.uses) + len(b.counts) }

// load is what a batch holds, as far as the batch bounds are concerned.
type load struct{ items, losses, bytes int }

func (b *batch) load() load { return load{items: b.items(), losses: len(b.losses), bytes: b.bytes} }

// fits reports whether an item of size n may join b.
func (s *Sender) fits(b *batch, n int) bool { return s.takes(b.load(), n) }

// takes reports whether an item of size n may join a batch loaded as l;
// an empty batch takes any one item.
func (s *Sender) takes(l load, n int) bool {
	if l.items+l.losses == 0 {
		return true
	}
	return l.items < s.cfg.MaxBatchEvents && l.bytes+n <= s.cfg.MaxBatchBytes
}

// placeMark attaches mark to the newest held batch, or reports it at once
// when nothing is held. Called with mu held.
func (s *Sender) placeMark(mark any) {
	if mark == nil {
		return
	}
	if n := len(s.queue); n > 0 {
		s.queue[n-1].mark, s.queue[n-1].hasMark = mark, true
		return
	}
	s.cfg.OnAck(mark)
}

// Close stops Enqueue; Run sends what is held, waits for its
// acknowledgement, ends the stream and returns nil. Close is safe twice.
func (s *Sender) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.room)
		s.room = make(chan struct{})
	}
	s.mu.Unlock()
	s.signal()
}

func (s *Sender) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// drained reports whether Close was called and everything is acknowledged.
func (s *Sender) drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed && len(s.queue) == 0
}

// Run connects and streams until ctx ends (returning its error), until the
// sender is closed and drained (returning nil), or until GiveUpAfter passes
// without a welcomed stream (returning why).
func (s *Sender) Run(ctx context.Context) error {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(s.cfg.Credentials),
		// A cut network is noticed within Time+Timeout even while idle;
		// the aggregator tolerates pings every 10 s or more.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}),
	}, s.cfg.DialOptions...)
	conn, err := grpc.NewClient(s.cfg.Target, opts...)
	if err != nil {
		return fmt.Errorf("create client for %s: %w", s.cfg.Target, err)
	}
	defer conn.Close()
	client := tokenwatchv1.NewAuditStreamServiceClient(conn)

	backoff := s.cfg.BackoffMin
	downSince := time.Now()
	for {
		if s.drained() {
			return nil
		}
		welcomed, err := s.session(ctx, client)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if welcomed {
			backoff = s.cfg.BackoffMin
			downSince = time.Now()
		}
		f := s.classify(err)
		if f.Permanent {
			backoff = s.cfg.BackoffMax
		}
		down := time.Since(downSince)
		if s.cfg.GiveUpAfter > 0 && down >= s.cfg.GiveUpAfter {
			if f.Class != ClassStreamEnded {
				err = fmt.Errorf("%s: %w", f.Message, err)
			}
			return fmt.Errorf("aggregator %s not reachable for %s: %w", s.cfg.Target, down.Round(time.Second), err)
		}
		wait := backoff/2 + rand.N(backoff/2+1) // equal jitter
		if s.cfg.GiveUpAfter > 0 {
			wait = min(wait, s.cfg.GiveUpAfter-down)
		}
		level := slog.LevelWarn
		if f.Permanent {
			level = slog.LevelError
		}
		s.cfg.Logger.Log(ctx, level, f.Message, "class", f.Class, "aggregator", s.cfg.Target, "err", err, "retry_in", wait.Round(time.Millisecond).String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.BackoffMax)
	}
}

var errNoWelcome = errors.New("no welcome")

// session runs one stream. It returns nil once the sender is drained and the
// stream closed, else the error that ended the stream, and whether the
// stream was welcomed.
func (s *Sender) session(ctx context.Context, client tokenwatchv1.AuditStreamServiceClient) (welcomed bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(s.cfg.WelcomeTimeout, func() {
		cancel(fmt.Errorf("%w within %s", errNoWelcome, s.cfg.WelcomeTimeout))
	})
	defer timer.Stop()

	cause := func(err error) error {
		if c := context.Cause(sctx); c != nil && !errors.Is(c, context.Canceled) {
			return c
		}
		return err
	}
	stream, err := client.Stream(sctx)
	if err != nil {
		return false, cause(fmt.Errorf("open stream: %w", err))
	}
	// A Send that fails with io.EOF found the stream ended: the Recv
	// below returns why.
	if err := stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: s.cfg.Hello}}); err != nil && !errors.Is(err, io.EOF) {
		return false, cause(fmt.Errorf("send hello: %w", err))
	}
	resp, err := stream.Recv()
	if err != nil {
		return false, cause(fmt.Errorf("wait for welcome: %w", err))
	}
	w := resp.GetWelcome()
	if w == nil {
		return false, fmt.Errorf("first response is not a welcome: %T", resp.GetMsg())
	}
	timer.Stop()
	interval := s.cfg.HeartbeatInterval
	if w.HeartbeatIntervalMs > 0 {
		interval = time.Duration(w.HeartbeatIntervalMs) * time.Millisecond
	}
	if s.streams.Add(1) > 1 {
		s.cfg.Logger.Info("reconnected to aggregator", "aggregator", s.cfg.Target, "cluster", w.Cluster)
	} else {
		s.cfg.Logger.Info("connected to aggregator", "aggregator", s.cfg.Target, "cluster", w.Cluster, "aggregator_version", w.AggregatorVersion)
	}
	s.welcomeLineage(w)
	s.ready.Store(true)
	defer s.ready.Store(false)

	s.resend()

	// From here on exactly one goroutine, receive's, calls Recv: gRPC
	// allows no concurrent RecvMsg on a stream, and a second caller can
	// miss the stream's end and block for good, ctx or not, wedging the
	// session (issue 12). Either side's failure cancels sctx, which ends a
	// Send blocked on flow control and a Recv alike.
	recvDone := make(chan error, 1)
	go func() {
		err := s.receive(stream)
		if err != nil {
			cancel(err)
		}
		recvDone <- err
	}()
	serr := s.send(sctx, stream, interval)
	if serr != nil && !errors.Is(serr, errStreamOver) {
		cancel(serr)
	}
	rerr := <-recvDone
	switch {
	case serr != nil && !errors.Is(serr, errStreamOver):
		return true, serr
	case rerr != nil:
		return true, rerr
	}
	return true, nil
}

// resend makes everything held go again on a new stream, numbered from 1.
func (s *Sender) resend() {
	s.mu.Lock()
	s.sent = 0
	s.nextSeq = 1
	for _, b := range s.queue {
		b.seq = 0
	}
	s.mu.Unlock()
	s.signal()
}

// welcomeLineage starts the stream's lineage from its Welcome: on when it
// carries LineageSettings and the agent declared the feature, else off.
// The receive goroutine has not started yet: no WatchUpdate is applied
// before this.
func (s *Sender) welcomeLineage(w *tokenwatchv1.Welcome) {
	if s.cfg.Lineage == nil {
		return
	}
	settings := w.GetLineage()
	s.lineageOn.Store(settings != nil)
	s.cfg.Lineage.Welcome(settings)
	if settings == nil {
		s.cfg.Logger.Info("aggregator pushes no lineage watches on this stream: lineage off", "aggregator", s.cfg.Target)
	}
}

// errStreamOver is send's error when Send reports io.EOF: the stream has
// ended and receive's Recv returns why.
var errStreamOver = errors.New("stream ended while sending")

// receive handles acknowledgements and watch updates, in stream order,
// until the stream ends: a WatchUpdate is applied before any Ack after it.
func (s *Sender) receive(stream grpc.BidiStreamingClient[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	setDone := false // the stream's watch set is complete: an Ack arrived
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if s.drained() {
				return nil
			}
			return errors.New("aggregator closed the stream")
		}
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		switch m := resp.GetMsg().(type) {
		case *tokenwatchv1.StreamResponse_Ack:
			if !setDone {
				setDone = true
				s.watchSetComplete()
			}
			if err := s.acked(m.Ack.GetSeq()); err != nil {
				return err
			}
		case *tokenwatchv1.StreamResponse_Watch:
			if s.cfg.Lineage == nil {
				return errors.New("unexpected watch update from aggregator: lineage was not declared")
			}
			if s.lineageOn.Load() {
				s.cfg.Lineage.Watch(m.Watch)
			}
		default:
			return fmt.Errorf("unexpected %T from aggregator", resp.GetMsg())
		}
	}
}

// watchSetComplete tells Lineage, when it is a WatchSetCompleter and
// lineage is on for the stream, that the stream's watch set is complete.
func (s *Sender) watchSetComplete() {
	if c, ok := s.cfg.Lineage.(WatchSetCompleter); ok && s.lineageOn.Load() {
		c.WatchSetComplete()
	}
}

// acked drops the batches up to seq and reports the newest mark among them.
func (s *Sender) acked(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq >= s.nextSeq {
		return fmt.Errorf("aggregator acknowledged batch %d, only %d sent", seq, s.nextSeq-1)
	}
	n := 0
	var mark any
	hasMark := false
	for n < s.sent && s.queue[n].seq <= seq {
		b := s.queue[n]
		s.eventsAcked.Add(uint64(len(b.events)))
		s.lossesAcked.Add(uint64(len(b.losses)))
		s.usesAcked.Add(uint64(len(b.uses)))
		s.countsAcked.Add(uint64(len(b.counts)))
		s.unacked.Add(^uint64(len(b.events) - 1))
		s.batchesAcked.Add(1)
		if b.hasMark {
			mark, hasMark = b.mark, true
		}
		s.queue[n] = nil
		n++
	}
	if n == 0 {
		return nil
	}
	s.queue = s.queue[n:]
	s.sent -= n
	if hasMark {
		s.cfg.OnAck(mark)
	}
	close(s.room)
	s.room = make(chan struct{})
	if s.closed && len(s.queue) == 0 {
		s.signal()
	}
	return nil
}

// send writes batches and heartbeats; it closes the send side once the
// sender is closed and everything is acknowledged.
func (s *Sender) send(ctx context.Context, stream grpc.BidiStreamingClient[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse], interval time.Duration) error {
	hb := time.NewTicker(interval)
	defer hb.Stop()
	if err := s.heartbeat(stream); err != nil {
		return err
	}
	for {
		s.mu.Lock()
		var req *tokenwatchv1.StreamRequest
		var b *batch
		if s.sent < len(s.queue) {
			b = s.queue[s.sent]
			b.seq = s.nextSeq
			s.nextSeq++
			s.sent++
			req = &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: s.wireBatch(b)}}
		}
		done := s.closed && len(s.queue) == 0
		s.mu.Unlock()
		if req != nil {
			if err := stream.Send(req); err != nil {
				return sendErr("send batch", err)
			}
			s.eventsSent.Add(uint64(len(b.events)))
			s.lossesSent.Add(uint64(len(b.losses)))
			if s.lineageOn.Load() {
				s.usesSent.Add(uint64(len(b.uses)))
				s.countsSent.Add(uint64(len(b.counts)))
			}
			s.batchesSent.Add(1)
			continue
		}
		if done {
			if err := stream.CloseSend(); err != nil {
				return fmt.Errorf("close stream: %w", err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.wake:
		case <-hb.C:
			if err := s.heartbeat(stream); err != nil {
				return err
			}
		}
	}
}

// wireBatch is b as sent on the current stream: without uses and counts
// when the stream's lineage is off (they were queued on a lineage stream
// and mean nothing to this aggregator).
func (s *Sender) wireBatch(b *batch) *tokenwatchv1.Batch {
	wb := &tokenwatchv1.Batch{Seq: b.seq, Events: b.events, Losses: b.losses}
	if s.lineageOn.Load() {
		wb.Uses, wb.Counts = b.uses, b.counts
	}
	return wb
}

func (s *Sender) heartbeat(stream grpc.BidiStreamingClient[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	h := &tokenwatchv1.Heartbeat{}
	if s.cfg.Status != nil {
		if st := s.cfg.Status(); st != nil {
			h = st
		}
	}
	h.Sent = timestamppb.Now()
	h.Unacked = s.unacked.Load()
	if err := stream.Send(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Heartbeat{Heartbeat: h}}); err != nil {
		return sendErr("send heartbeat", err)
	}
	return nil
}

// sendErr wraps a failed Send: io.EOF says only that the stream has ended
// (errStreamOver; receive learns the status), anything else is send's own
// failure.
func sendErr(what string, err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %w", what, errStreamOver)
	}
	return fmt.Errorf("%s: %w", what, err)
}
