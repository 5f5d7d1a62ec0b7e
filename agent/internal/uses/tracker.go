package uses

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Defaults of Config.
const (
	// DefaultCapacity is the log the lookback index covers, in bytes: 2
	// minutes of 4,000 lines/s of 1.1 KB. The index holds only the
	// blocks' locations (40 bytes a block); the bytes bound what a search
	// reads again. Beyond, the oldest unpinned blocks go early
	// (tokenwatch_agent_lineage_lookback_dropped_total).
	DefaultCapacity        = 512 << 20
	DefaultMaxKeysPerToken = 32
	DefaultFlushInterval   = time.Second
	DefaultLookback        = 2 * time.Minute
)

// maxBlocks bounds the lookback index in blocks (40 bytes each): a live
// follower reads small blocks, each write or so.
const maxBlocks = 1 << 16

// readSlack is how long before a watch's From (the mint time) a block read
// may still hold a request the watch matches. A line is read after the
// apiserver wrote it, and it wrote it after requestReceivedTimestamp, on
// the same node's clock: a block read before From holds no line logged at
// or after From. The slack covers a clock step between the two.
const readSlack = time.Second

// ReasonLookbackUnavailable is the loss reason of a line found for a new
// watch that could not be read again.
const ReasonLookbackUnavailable = "lineage_lookback_unavailable"

// Queue takes what the Tracker sends outside a block: uses found by a
// lookback search, counts flushed on their own, and losses. The sender's
// EnqueueItems.
type Queue interface {
	EnqueueItems(ctx context.Context, it sender.Items, mark any) error
}

// Config configures a Tracker. Zero values take the defaults.
type Config struct {
	// Capacity bounds the lookback index, in bytes of log.
	Capacity int
	// Lookback is the window until a Welcome names one (2m: the
	// aggregator's default).
	Lookback time.Duration
	// MaxKeysPerToken bounds the reason keys remembered per token; a use
	// with a further new key is counted, not sent.
	MaxKeysPerToken int
	// FlushInterval: counts not sent with a block are sent on their own
	// this long after (at most).
	FlushInterval time.Duration
	// Now is the agent's read clock (time.Now).
	Now func() time.Time
	// Queue receives lookback uses, counts flushed alone and losses.
	Queue  Queue
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Capacity <= 0 {
		c.Capacity = DefaultCapacity
	}
	if c.MaxKeysPerToken <= 0 {
		c.MaxKeysPerToken = DefaultMaxKeysPerToken
	}
	if c.Lookback <= 0 {
		c.Lookback = DefaultLookback
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the Tracker's figures.
type Stats struct {
	// Watches held, by kind.
	TokenWatches, ActorUserWatches, ActorCredentialWatches int
	// UsesSent counts requests queued one by one (lookback ones included);
	// UsesCounted those only counted.
	UsesSent, UsesCounted uint64
	// StartsForgotten counts long-running requests whose ResponseStarted
	// was forgotten before their end (maxStarted): they count twice.
	StartsForgotten uint64
	// LookbackEntries is the number of blocks in the index, LookbackBytes
	// their size; LookbackPinned how many of them are pinned.
	LookbackEntries, LookbackPinned int
	LookbackBytes                   uint64
	// LookbackHits counts lines read again that matched a new watch;
	// LookbackMisses blocks that could not be read again.
	LookbackHits, LookbackMisses uint64
	// LookbackRescanned counts the bytes read again for new watches.
	LookbackRescanned uint64
	// LookbackUnqueued counts the lookback uses dropped at a stop because
	// their block's items were never queued (a restart reads it again).
	LookbackUnqueued uint64
	// LookbackDropped counts blocks evicted early because the index was
	// full (the window is then shorter than the lookback).
	LookbackDropped uint64
	// PinWaits counts the times reading waited for acknowledgements
	// because pinned entries filled the index.
	PinWaits uint64
	// OpenFiles is the number of files held open for re-reading.
	OpenFiles int
	// On reports whether lineage is on for the current stream (or not yet
	// known).
	On bool
}

// watchKey names a watch.
type watchKey struct {
	kind linematch.Kind
	key  string
}

// span is a watch's bounds in Unix nanoseconds (0: unbounded side).
type span struct{ from, until int64 }

// pin keeps the index entries (blocks) from seq on until the block ticket
// is acknowledged.
type pin struct {
	ticket uint64
	seq    uint64
}

// Tracker is the agent's lineage state. It implements sender.Lineage; the
// pipeline calls Block for each block, Queued once the block's items are
// queued, and Acked with each acknowledged ticket; Run performs the
// lookback searches' re-reads and sends what they find.
type Tracker struct {
	cfg Config

	mu       sync.Mutex
	on       bool          // lineage on for the stream, or not yet known
	window   time.Duration // lookback
	set      linematch.Set
	held     map[watchKey]span
	prior    map[watchKey]span  // the previous stream's watches, until its first reset
	gapFrom  linematch.Location // where reading stood at the Welcome
	readTo   linematch.Location // the end of the last block read
	welcomed bool               // a stream with lineage on was welcomed
	awaiting bool               // welcomed, waiting for the stream's first reset
	// completing: the stream's first reset is applied, but its set may go
	// on in later updates until the stream's first Ack (WatchSetComplete);
	// prior stays the reference until then.
	completing bool
	lb         *blockIndex
	files      *files
	pins       []pin
	ticket     uint64 // the last block's ticket
	mint       bool   // a token create outside a block: pin from the next one
	rep        *reporter
	stages     *stages           // which audit stage of a request is its use
	m          linematch.Matcher // Block's
	hits       []linematch.Hit
	jobs       []*job
	busy       bool          // Run is working on a job
	room       chan struct{} // closed and replaced when pins are released or jobs finish
	work       chan struct{} // capacity 1: a job is queued

	rescan rescanner // Run's, used only from its goroutine

	// Holding lookback matches until their block is queued (hold.go).
	queued    uint64             // the last ticket whose block's items are queued (Queued, Acked)
	lastBlock linematch.Location // the last block read, its file and offset
	later     []heldItems        // lookback uses and counts held, in ticket order

	usesSent, lbHits, lbMisses uint64
	rescanned                  uint64 // bytes read again for searches
	unindexed                  uint64 // blocks the index could not take (pinned full)
	waits                      uint64 // times Block waited for pins to be released
	unqueued                   uint64 // lookback uses held and dropped at a stop (hold.go)

	onWait func() // tests: Block is about to wait for pins to be released
}

// New returns a Tracker; lineage counts as on until a Welcome says
// otherwise.
func New(cfg Config) *Tracker {
	cfg.setDefaults()
	return &Tracker{
		cfg:    cfg,
		on:     true,
		window: cfg.Lookback,
		held:   map[watchKey]span{},
		lb:     newBlockIndex(uint64(cfg.Capacity), maxBlocks),
		files:  newFiles(),
		rep:    newReporter(cfg.MaxKeysPerToken),
		stages: newStages(maxStarted),
		room:   make(chan struct{}),
		work:   make(chan struct{}, 1),
	}
}

var (
	_ sender.Lineage           = (*Tracker)(nil)
	_ sender.WatchSetCompleter = (*Tracker)(nil)
)

// Stats returns the Tracker's figures.
func (t *Tracker) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := Stats{
		TokenWatches:           t.set.Len(linematch.Token),
		ActorUserWatches:       t.set.Len(linematch.ActorUser),
		ActorCredentialWatches: t.set.Len(linematch.ActorCredential),
		UsesSent:               t.usesSent,
		UsesCounted:            t.rep.counted,
		StartsForgotten:        t.stages.forgotten,
		LookbackEntries:        t.lb.n,
		LookbackBytes:          t.lb.bytes,
		LookbackPinned:         t.lb.pinnedEntries(),
		LookbackHits:           t.lbHits,
		LookbackMisses:         t.lbMisses,
		LookbackRescanned:      t.rescanned,
		LookbackDropped:        t.lb.dropped + t.unindexed,
		LookbackUnqueued:       t.unqueued,
		PinWaits:               t.waits,
		OpenFiles:              t.files.open(),
		On:                     t.on,
	}
	return st
}

// Welcome starts a stream's lineage (sender.Lineage). Off: the watch set,
// the index and the pins are dropped. On: the stream starts with no watch
// until its first WatchUpdate (a reset); the lines read meanwhile are found
// by that reset.
func (t *Tracker) Welcome(settings *tokenwatchv1.LineageSettings) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if settings == nil {
		t.on = false
		t.set.Reset()
		t.held, t.prior, t.awaiting, t.completing = map[watchKey]span{}, nil, false, false
		t.lb = newBlockIndex(uint64(t.cfg.Capacity), maxBlocks)
		for _, j := range t.jobs {
			for _, no := range j.files {
				if f := t.files.byNo[no]; f != nil {
					f.jobs--
				}
			}
		}
		t.jobs = nil
		t.files.closeAll()
		t.pins = nil
		t.signalRoom()
		return
	}
	t.on, t.welcomed = true, true
	t.window = time.Duration(settings.LookbackMs) * time.Millisecond
	switch {
	case t.completing:
		// The last stream's set was not complete: what the stream before
		// held is still the reference, with what arrived since.
		for k, sp := range t.held {
			if cur, ok := t.prior[k]; ok {
				sp = sp.hull(cur)
			}
			t.prior[k] = sp
		}
		t.completing = false
	case !t.awaiting:
		t.prior = t.held
	}
	t.held = map[watchKey]span{}
	t.set.Reset()
	if !t.awaiting {
		// A stream that ended before its reset leaves its gap open: the
		// lines read since its Welcome were matched with no watch too.
		t.gapFrom = t.readTo
	}
	t.awaiting = true
}

// signalRoom wakes those waiting for pins to be released or jobs to end.
// Called with mu held.
func (t *Tracker) signalRoom() {
	close(t.room)
	t.room = make(chan struct{})
}

// Acked releases the pins of the blocks up to ticket: their batches, and
// the watches they created, have reached the aggregator and this agent.
func (t *Tracker) Acked(ticket uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queuedTo(ticket)
	t.stages.acknowledged(ticket)
	n := 0
	for n < len(t.pins) && t.pins[n].ticket <= ticket {
		n++
	}
	if n == 0 {
		return
	}
	t.pins = t.pins[n:]
	t.setPin()
	t.signalRoom()
}

// Starts returns the long-running requests counted at their start whose
// end a restart from the last acknowledged block reads: those not ended,
// and those ended in a block not acknowledged. They are the keyed hashes of
// their auditIDs, sorted, and the key (nil when there are none); gen
// changes when they do. The checkpoint keeps them with the acknowledged
// position, so that such a request's end, read again after a restart, is
// not counted again. The slice is shared and must not be modified.
func (t *Tracker) Starts() (key []byte, hashes []uint64, gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stages.settled()
}

// RestoreStarts takes the starts a checkpoint kept (Starts); it is called
// before the first block. A key of the wrong length is ignored.
func (t *Tracker) RestoreStarts(key []byte, hashes []uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stages.restore(key, hashes)
}

// setPin pins the index from the oldest pin held. Called with mu held.
func (t *Tracker) setPin() {
	if len(t.pins) == 0 {
		t.lb.pin = noPin
		return
	}
	t.lb.pin = t.pins[0].seq
}

// SetQueue sets Config.Queue; it is called before Run.
func (t *Tracker) SetQueue(q Queue) { t.cfg.Queue = q }

// Mint notes a token create sent outside a block (an over-long line): the
// lines of the next block are pinned.
func (t *Tracker) Mint() {
	t.mu.Lock()
	t.mint = true
	t.mu.Unlock()
}

// Close closes the files held open. The Tracker is not used afterwards.
func (t *Tracker) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for no := range t.files.byNo {
		t.files.drop(no)
	}
}
