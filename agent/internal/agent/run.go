package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/agent/internal/checkpoint"
	"github.com/tokenwatch/tokenwatch/agent/internal/metrics"
	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/agent/internal/uses"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// reasonEventTooLarge is the loss reason of a token create too large to send.
const reasonEventTooLarge = "event_too_large"

// Marks of events sent with fields cut or left absent (the label of
// tokenwatch_agent_events_marked_total).
const (
	markTruncated = "truncated"
	markMalformed = "malformed_fields"
)

// Run runs the agent until ctx ends (a stop signal: it drains for up to
// ShutdownTimeout, writes the checkpoint and returns nil), or, with Once,
// until everything read is acknowledged (nil) or the aggregator stays
// unreachable for OnceTimeout (an error saying so). Other failures are
// returned with their context.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a, err := newAgent(cfg.withDefaults())
	if err != nil {
		return err
	}
	return a.run(ctx)
}

// transport returns the connection's credentials: mTLS unless Insecure.
func transport(c Config) (credentials.TransportCredentials, error) {
	if c.Insecure {
		return insecure.NewCredentials(), nil
	}
	creds, err := tlsconf.ClientCredentials(c.TLSCert, c.TLSKey, c.TLSCA, c.Logger)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key/--tls-ca: %w", err)
	}
	return creds, nil
}

func sessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func heartbeat(st follow.Stats) *tokenwatchv1.Heartbeat {
	h := &tokenwatchv1.Heartbeat{
		File:        st.File,
		Offset:      uint64(max(st.Offset, 0)),
		Size:        uint64(max(st.Size, 0)),
		BytesBehind: uint64(max(st.Behind, 0)),
		LinesRead:   uint64(max(st.Lines, 0)),
		FileState:   fileState(st.Live),
		FileError:   st.LiveErr,
	}
	if !st.LastGrowth.IsZero() {
		h.LastGrowth = timestamppb.New(st.LastGrowth)
	}
	return h
}

// pipeline is the follower's handler: pre-filter, decode, convert, send.
// It also keeps the newest acknowledged position for the checkpoint.
type pipeline struct {
	snd   *sender.Sender
	lin   *uses.Tracker // token lineage: watches, uses, lookback
	m     *metrics.Agent
	store checkpoints
	log   *slog.Logger

	// Used only from the follower's goroutine.
	needFirst bool // no checkpoint yet: save where reading starts
	filter    prefilter.Filter
	matches   []prefilter.Match
	events    []*tokenwatchv1.TokenEvent
	long      *audit.Extractor // the over-long line being read, if any

	mu       sync.Mutex
	acked    *follow.Position // newest acknowledged; nil before the first
	ackedVer uint64
	savedVer uint64
	// savedGen is the generation of lineage's starts last saved
	// (uses.Tracker.Starts); they are read with acked under mu, and Acked
	// is called under mu, so that both agree.
	savedGen uint64
	saveMu   sync.Mutex // one Save at a time
}

var _ follow.LongLineHandler = (*pipeline)(nil)

// Block finds the token creates of b and queues them with b's end as mark:
// once they (and everything before) are acknowledged, the checkpoint may
// move past b.
func (p *pipeline) Block(ctx context.Context, b follow.Block) error {
	if p.needFirst {
		// Where reading starts needs no acknowledgement. Saving it at once
		// means a restart, however early, resumes here by identity rather
		// than at --start-at, which would take rotated files for history.
		start := b.Pos
		start.ID.FP = bytes.Clone(start.ID.FP)
		if err := p.saveFirst(start); err != nil {
			return err
		}
		p.needFirst = false
	}
	var c prefilter.Counts
	p.matches, c = p.filter.Block(p.matches[:0], b.Data)
	if c.Candidates > 0 {
		p.m.Candidates.Add(float64(c.Candidates))
		p.m.Decoded.Add(float64(c.Decoded))
		p.m.Malformed.Add(float64(c.Malformed))
		p.m.Matches.Add(float64(c.Matches))
	}
	p.events = p.events[:0]
	var losses []*tokenwatchv1.LossReport
	var fp []byte // the file's identity, shared by the block's events
	if len(p.matches) > 0 {
		fp = bytes.Clone(b.Pos.ID.FP)
	}
	for i, m := range p.matches {
		if len(m.Event.Malformed) > 0 {
			p.m.Marked.WithLabelValues(markMalformed).Inc()
		}
		off := uint64(b.Pos.Offset) + uint64(m.Offset)
		e, loss := p.convert(m.Event, b.Pos.Name, off)
		p.matches[i].Event = nil
		if loss != nil {
			losses = append(losses, loss)
			continue
		}
		e.Source.Fingerprint, e.Source.FingerprintLen = fp, uint32(max(b.Pos.ID.FPLen, 0))
		p.events = append(p.events, e)
	}
	end := b.End()
	end.ID.FP = bytes.Clone(end.ID.FP)
	// Lineage matches and indexes the block before its token creates are
	// queued: the watches they create find the lines after them.
	it, ticket, err := p.lin.BlockMarked(ctx, b, len(p.events) > 0, p.filter.Marks())
	if err != nil {
		return err
	}
	// The block's losses, token creates, uses and counts are queued with
	// its mark, all or none: a restart from the checkpoint before the
	// block reports none of them twice.
	it.Events, it.Losses = p.events, losses
	if err := p.snd.EnqueueItems(ctx, it, blockMark{pos: end, ticket: ticket}); err != nil {
		return err
	}
	// Lookback matches in b may go on their own now: after b's mark.
	p.lin.Queued(ticket)
	return nil
}

// blockMark is the mark of a block's items: the position after it (the
// checkpoint) and its lineage ticket (the pins it releases).
type blockMark struct {
	pos    follow.Position
	ticket uint64
}

// convert gives ev's wire form, located at file and off. An event too large
// for the stream is sent with its fields cut to their bounds (audit.Bound)
// and marked, so it still alerts with its actor and target; only if even
// that does not fit (it cannot: see TestBoundFits) is it a loss.
func (p *pipeline) convert(ev *audit.Event, file string, off uint64) (*tokenwatchv1.TokenEvent, *tokenwatchv1.LossReport) {
	e := wire.ToProto(ev)
	e.Source = &tokenwatchv1.SourcePosition{File: file, Offset: off}
	n := proto.Size(e)
	if n <= sender.MaxEventBytes && len(ev.Truncated) == 0 {
		return e, nil
	}
	if n > sender.MaxEventBytes {
		audit.Bound(ev)
		e = wire.ToProto(ev)
		e.Source = &tokenwatchv1.SourcePosition{File: file, Offset: off}
	}
	p.m.Marked.WithLabelValues(markTruncated).Inc()
	if m := proto.Size(e); m > sender.MaxEventBytes {
		p.m.Losses.WithLabelValues(reasonEventTooLarge).Inc()
		return nil, &tokenwatchv1.LossReport{
			Reason: reasonEventTooLarge, File: file, Offset: off,
			LinesLost: 1, LinesKnown: true, Observed: timestamppb.Now(),
			Detail: fmt.Sprintf("token-create event of %d bytes (%d bounded) exceeds the %d-byte limit", n, m, sender.MaxEventBytes),
		}
	}
	return e, nil
}

// LongLine feeds a line longer than the follower's bound to an extractor,
// which keeps only the event's fields, bounded; Loss finishes it.
func (p *pipeline) LongLine(_ context.Context, piece []byte, start bool) error {
	if start {
		if p.long != nil {
			p.long.Close()
		}
		p.long = audit.NewExtractor()
	}
	if p.long != nil {
		p.long.Write(piece)
	}
	return nil
}

// longLine finishes the extraction of an over-long line: a token create on
// it is sent bounded, and l then reports only the bytes not kept.
func (p *pipeline) longLine(l *follow.Loss) *tokenwatchv1.TokenEvent {
	x := p.long
	p.long = nil
	if x == nil {
		return nil
	}
	defer x.Close()
	if l.Reason != follow.ReasonLineTooLong || !l.Whole {
		return nil
	}
	ev, kept, err := x.Finish()
	switch {
	case err != nil:
		l.Detail += "; not a JSON object"
		return nil
	case !ev.IsTokenCreate():
		l.Detail += "; not a token create"
		return nil
	}
	p.m.Matches.Inc()
	if len(ev.Malformed) > 0 {
		p.m.Marked.WithLabelValues(markMalformed).Inc()
	}
	e, loss := p.convert(ev, l.File, uint64(max(l.Offset, 0)))
	if loss != nil {
		return nil
	}
	l.Detail = fmt.Sprintf("line of %d bytes, over the line bound: its token create was sent with its fields bounded (%d bytes kept)", l.Bytes, kept)
	l.Bytes = max(0, l.Bytes-int64(kept))
	l.Lines = 0
	return e
}

// Loss reports data the follower could not deliver; it travels to the
// aggregator like an event. An over-long line holding a token create
// travels as that event, bounded, with the loss of the bytes not kept.
func (p *pipeline) Loss(ctx context.Context, l follow.Loss) error {
	var events []*tokenwatchv1.TokenEvent
	if e := p.longLine(&l); e != nil {
		events = append(events, e)
		p.lin.Mint()
	}
	p.m.Losses.WithLabelValues(l.Reason).Inc()
	p.log.Warn("audit data lost", "reason", l.Reason, "file", l.File, "offset", l.Offset,
		"bytes", l.Bytes, "bytes_known", l.BytesKnown, "lines", l.Lines, "lines_known", l.LinesKnown, "detail", l.Detail)
	r := &tokenwatchv1.LossReport{
		Reason: l.Reason, File: l.File, Detail: l.Detail,
		BytesLost: uint64(max(l.Bytes, 0)), BytesKnown: l.BytesKnown,
		LinesLost: uint64(max(l.Lines, 0)), LinesKnown: l.LinesKnown,
		Offset:   uint64(max(l.Offset, 0)),
		Observed: timestamppb.Now(),
	}
	return p.snd.Enqueue(ctx, events, []*tokenwatchv1.LossReport{r}, nil)
}

// onAck is the sender's OnAck: marks arrive in order.
func (p *pipeline) onAck(mark any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var pos follow.Position
	switch m := mark.(type) {
	case blockMark:
		pos = m.pos
		p.lin.Acked(m.ticket)
	case follow.Position:
		pos = m
	default:
		return
	}
	p.acked = &pos
	p.ackedVer++
}

// acknowledged is what a checkpoint saves: the newest acknowledged
// position, lineage's starts as of it, and their versions.
type acknowledged struct {
	pos      follow.Position
	starts   checkpoint.Starts
	ver, gen uint64
}

// ackedPos returns what was acknowledged last; ok is false before the
// first acknowledgement.
func (p *pipeline) ackedPos() (a acknowledged, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.acked == nil {
		return acknowledged{}, false
	}
	a.pos, a.ver = *p.acked, p.ackedVer
	a.starts.Key, a.starts.Hashes, a.gen = p.lin.Starts()
	return a, true
}

// save writes the acknowledged position when it moved since the last save.
func (p *pipeline) save() error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	a, ok := p.ackedPos()
	if !ok || (a.ver == p.savedVer && a.gen == p.savedGen) {
		return nil
	}
	if err := p.store.SaveStarts(a.pos, a.starts); err != nil {
		p.m.SaveErrors.Inc()
		return err
	}
	p.m.Saves.Inc()
	p.savedVer, p.savedGen = a.ver, a.gen
	return nil
}

// saveFirst writes the position reading starts at, unless an
// acknowledged position was saved meanwhile.
func (p *pipeline) saveFirst(pos follow.Position) error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	if _, ok := p.ackedPos(); ok {
		return nil
	}
	if err := p.store.SaveStarts(pos, checkpoint.Starts{}); err != nil {
		p.m.SaveErrors.Inc()
		return err
	}
	p.m.Saves.Inc()
	return nil
}

func (p *pipeline) saveEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.save(); err != nil {
				p.log.Error("checkpoint not written", "err", err)
			}
		}
	}
}
