package ingest

import (
	"context"
	"math"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// FeatureLineage is the Hello feature of an agent that applies
// WatchUpdates and sends Batch.uses and Batch.counts.
const FeatureLineage = "lineage"

// LineageProcessor is implemented by Processors that follow token lineage
// (*pipeline.Pipeline does). Without it no stream gets lineage.
type LineageProcessor interface {
	// Watches is the whole watch set, for a stream that starts.
	Watches() []lineage.Watch
	// LineageConfig is the lineage configuration, read at start.
	LineageConfig() lineage.Config
	// LineageUnsupported reports an agent that does not declare lineage.
	LineageUnsupported(ctx context.Context, src detect.Source, agentVersion string) error
}

var _ LineageProcessor = (*pipeline.Pipeline)(nil)

// maxWatchBytes bounds the encoded watches of one WatchUpdate, so that the
// StreamResponse carrying it stays under 4 MiB, gRPC's default receive
// limit (and the contract's bound).
var maxWatchBytes = 4<<20 - 4<<10

// snapshotMaxAge is how long the full set built for a starting stream is
// reused by the streams that start after it while no change is published:
// a thousand agents reconnecting at once share one copy. Within it a
// watch that ended may still be sent; agents match by its bounds.
const snapshotMaxAge = 5 * time.Second

// fleet is the set of lineage streams that receive the watches. A stream
// joins with the full set and then receives every change published after;
// both happen under mu, so a change is in the set a stream starts with or
// published to it, or both: the pipeline applies a change before its
// batch's Result, and so before it is published, and a stream that joins
// in between gets it twice (the agent takes a watch it holds with the same
// bounds as nothing new).
type fleet struct {
	m *metrics

	mu      sync.Mutex
	streams map[*outbox]struct{}
	snap    []outItem // the last full set built, shared
	snapAt  time.Time
}

// newFleet returns an empty fleet; set its m before use.
func newFleet() *fleet {
	return &fleet{streams: map[*outbox]struct{}{}}
}

// join queues the full set, from watches, on o as its first updates and
// registers o for the changes published from then on. Call leave when the
// stream ends.
func (f *fleet) join(o *outbox, watches func() []lineage.Watch) (leave func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.snap == nil || time.Since(f.snapAt) > snapshotMaxAge {
		f.snap, f.snapAt = watchUpdates(watches(), nil, true), time.Now()
	}
	o.enqueue(f.snap, false)
	f.streams[o] = struct{}{}
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.streams, o)
	}
}

// publish queues the changes of a batch on every lineage stream, without
// waiting for any: a stream whose queue is full is failed, dropped from the
// fleet and counted, and ends.
func (f *fleet) publish(add, remove []lineage.Watch) {
	if len(add) == 0 && len(remove) == 0 {
		return
	}
	items := watchUpdates(add, remove, false)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snap = nil
	for o := range f.streams {
		if !o.enqueue(items, true) {
			o.fail(errWatchOverflow)
			delete(f.streams, o)
			f.m.lineageDropped.Inc()
		}
	}
}

// size is the number of lineage streams.
func (f *fleet) size() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.streams)
}

// watchUpdates splits a change into WatchUpdates whose watches take at most
// maxWatchBytes encoded each, adds first; with reset, the first has Reset
// (an empty set is one update that resets). A watch both added and removed
// is removed: a batch that added a watch and dropped it (lineage.max_watched)
// leaves it out.
func watchUpdates(add, remove []lineage.Watch, reset bool) []outItem {
	type wk struct {
		kind lineage.Kind
		key  string
	}
	removed := make(map[wk]bool, len(remove))
	for _, w := range remove {
		removed[wk{w.Kind, w.Key}] = true
	}
	var items []outItem
	cur := &tokenwatchv1.WatchUpdate{Reset_: reset}
	size, n := 0, 0
	flush := func() {
		items = append(items, outItem{msg: &tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: cur}}, watches: n})
		cur, size, n = &tokenwatchv1.WatchUpdate{}, 0, 0
	}
	put := func(w lineage.Watch, rm bool) {
		p := wire.WatchToProto(w)
		if rm {
			p.From, p.Until = nil, nil
		}
		sz := protowire.SizeTag(2) + protowire.SizeBytes(proto.Size(p))
		if n > 0 && size+sz > maxWatchBytes {
			flush()
		}
		if rm {
			cur.Remove = append(cur.Remove, p)
		} else {
			cur.Add = append(cur.Add, p)
		}
		size += sz
		n++
	}
	for _, w := range add {
		if !removed[wk{w.Kind, w.Key}] {
			put(w, false)
		}
	}
	for _, w := range remove {
		put(w, true)
	}
	if n > 0 || reset && len(items) == 0 {
		flush()
	}
	return items
}

// lineageSettings is the Welcome's lineage part of a stream whose agent
// declared the feature, nil when lineage is off.
func lineageSettings(cfg lineage.Config) *tokenwatchv1.LineageSettings {
	if !cfg.Enabled {
		return nil
	}
	ms := cfg.Lookback / time.Millisecond
	return &tokenwatchv1.LineageSettings{LookbackMs: uint32(min(max(ms, 0), math.MaxUint32))}
}

// prepareLineage converts a batch's lineage uses and counts into pb;
// those that cannot be read (no event, an unknown kind of count) are left
// out.
func prepareLineage(b *tokenwatchv1.Batch, pb *pipeline.Batch) {
	for _, u := range b.GetUses() {
		if e, kinds, lookback, ok := wire.UseFromProto(u); ok {
			pb.Uses = append(pb.Uses, pipeline.Use{Event: e, Kinds: kinds, Lookback: lookback})
		}
	}
	for _, c := range b.GetCounts() {
		if lc, ok := wire.CountFromProto(c); ok {
			pb.Counts = append(pb.Counts, lc)
		}
	}
}

// protoCredentialJTI reports whether e's user authenticated with a bound
// token (lineage.CredentialJTI), without converting e.
func protoCredentialJTI(e *tokenwatchv1.TokenEvent) bool {
	for _, v := range e.GetUser().GetExtra()[lineage.ExtraCredentialID].GetValues() {
		if len(v) > len(jtiPrefix) && v[:len(jtiPrefix)] == jtiPrefix {
			return true
		}
	}
	return false
}

// lineageCost estimates the bytes a batch's uses and counts hold until
// its commit: their protobuf form, then the converted form, about as large.
func lineageCost(b *tokenwatchv1.Batch) int64 {
	var n int64
	for _, u := range b.GetUses() {
		n += 2 * int64(proto.Size(u))
	}
	for _, c := range b.GetCounts() {
		n += 2 * int64(proto.Size(c))
	}
	return n
}
