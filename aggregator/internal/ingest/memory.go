package ingest

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Memory of received data is bounded fleet-wide: every stream accounts
// for the bytes it holds (the message gRPC is receiving for it, then the
// screened batches waiting for their commit) against one server-wide
// budget, and reads its next message only once it holds the budget for it.
// A stream that cannot get budget stops reading: its HTTP/2 flow-control
// window fills and its agent is held back, no other.
//
// Admission is fair in three ways:
//   - Each stream has StreamShareBytes of its own: a stream that holds no
//     more than that (an agent sending small batches and heartbeats, a new
//     stream) never waits for the shared budget, so no agent starves behind
//     others' backlogs.
//   - The shared budget is first come, first served (a FIFO semaphore): a
//     large request is not overtaken indefinitely by smaller ones.
//   - One cluster (one certificate) holds at most a quarter of the shared
//     budget, so streams that never finish a message or never read their
//     acknowledgements pin only their own cluster's share.
//
// A message's size is known only once it is read, so a stream reserves the
// size of its previous message before reading the next; a larger message
// is charged when it has been read, before the stream reads again. The
// budget's bound thus holds for every message but the one each stream is
// receiving, which MaxMessageBytes bounds.

// StreamShareBytes is the budget every stream has of its own, beyond the
// shared one.
const StreamShareBytes = 64 << 10

// DefaultMaxBufferedBytes is the shared budget when Options leave it 0.
const DefaultMaxBufferedBytes = 64 << 20

// budget is the server-wide memory budget of received data.
type budget struct {
	shared *semaphore.Weighted
	size   int64
	// perCluster is the most one cluster's streams may hold of the shared
	// budget together, and the most one message is charged.
	perCluster int64

	mu       sync.Mutex
	clusters map[string]*clusterBudget
	held     int64 // bytes held, own shares included (for the gauge)

	waits atomic.Int64 // acquisitions that waited for budget
}

type clusterBudget struct {
	sem     *semaphore.Weighted
	streams int
}

func newBudget(size int64) *budget {
	if size <= 0 {
		size = DefaultMaxBufferedBytes
	}
	return &budget{
		shared:     semaphore.NewWeighted(size),
		size:       size,
		perCluster: max(size/4, 1),
		clusters:   map[string]*clusterBudget{},
	}
}

// stream returns the accounting of one stream of cluster; call its close
// when the stream ends.
func (b *budget) stream(cluster string) *streamBudget {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.clusters[cluster]
	if c == nil {
		c = &clusterBudget{sem: semaphore.NewWeighted(b.perCluster)}
		b.clusters[cluster] = c
	}
	c.streams++
	return &streamBudget{b: b, cluster: cluster, c: c}
}

// heldBytes returns the bytes all streams hold.
func (b *budget) heldBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

// streamBudget is one stream's part of the budget. acquire is called by
// the stream's receiver only; release by its receiver and committer.
type streamBudget struct {
	b       *budget
	cluster string
	c       *clusterBudget

	mu     sync.Mutex
	held   int64 // bytes held, own share included
	shared int64 // of which taken from the shared (and cluster) budget
}

// sharedPart is how much of held bytes exceed the stream's own share.
func sharedPart(held int64) int64 { return max(held-StreamShareBytes, 0) }

// acquire waits until the stream may hold n more bytes (n is capped at the
// per-cluster share, the most a message is charged) and returns the bytes
// charged, to be released once they are no longer held. It fails only when
// ctx ends.
func (s *streamBudget) acquire(ctx context.Context, n int64) (int64, error) {
	n = min(max(n, 0), s.b.perCluster)
	if n == 0 {
		return 0, nil
	}
	s.mu.Lock()
	need := sharedPart(s.held+n) - s.shared
	s.mu.Unlock()
	if need > 0 {
		if err := s.b.take(ctx, s.c.sem, need); err != nil {
			return 0, err
		}
		if err := s.b.take(ctx, s.b.shared, need); err != nil {
			s.c.sem.Release(need)
			return 0, err
		}
	} else {
		need = 0
	}
	s.mu.Lock()
	s.held += n
	s.shared += need
	s.mu.Unlock()
	s.b.add(n)
	s.settle()
	return n, nil
}

// release gives back n bytes charged by acquire. A nil streamBudget
// accounts for nothing.
func (s *streamBudget) release(n int64) {
	if s == nil || n <= 0 {
		return
	}
	s.mu.Lock()
	s.held -= n
	s.mu.Unlock()
	s.b.add(-n)
	s.settle()
}

// settle returns shared budget the stream holds beyond what its bytes need
// (after a release, or when a release ran while acquire waited).
func (s *streamBudget) settle() {
	s.mu.Lock()
	excess := s.shared - sharedPart(s.held)
	if excess > 0 {
		s.shared -= excess
	}
	s.mu.Unlock()
	if excess > 0 {
		s.b.shared.Release(excess)
		s.c.sem.Release(excess)
	}
}

// close releases what the stream still holds (batches a failed committer
// left behind) and forgets the stream; the stream's receiver and committer
// must have stopped.
func (s *streamBudget) close() {
	s.mu.Lock()
	held, shared := s.held, s.shared
	s.held, s.shared = 0, 0
	s.mu.Unlock()
	if shared > 0 {
		s.b.shared.Release(shared)
		s.c.sem.Release(shared)
	}
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held -= held
	if s.c.streams--; s.c.streams == 0 {
		delete(b.clusters, s.cluster)
	}
}

// take acquires n from sem, counting the acquisitions that had to wait.
func (b *budget) take(ctx context.Context, sem *semaphore.Weighted, n int64) error {
	if sem.TryAcquire(n) {
		return nil
	}
	b.waits.Add(1)
	return sem.Acquire(ctx, n)
}

func (b *budget) add(n int64) {
	b.mu.Lock()
	b.held += n
	b.mu.Unlock()
}

// batchCost estimates the bytes a screened batch holds until its commit:
// its converted events (about twice their encoded size: strings, slices
// and maps), the encodings kept as they arrived (raw), a pointer per
// received event while it waits, and a fixed overhead.
func batchCost(kept []*tokenwatchv1.TokenEvent, raw [][]byte, received int) int64 {
	n := int64(512 + 16*received)
	for _, e := range kept {
		n += 2 * int64(proto.Size(e))
	}
	for _, r := range raw {
		n += int64(len(r))
	}
	return n
}

// wireSizes is a gRPC stats handler that records the size of each message
// a stream receives, so that the stream reserves about as much before it
// reads the next one.
type wireSizes struct{}

type wireSizeKey struct{}

// wireSize holds the last received message's size of one stream; written
// and read on the stream handler's goroutine only (RecvMsg runs there).
type wireSize struct{ last int }

func (wireSizes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, wireSizeKey{}, &wireSize{})
}

func (wireSizes) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if p, ok := s.(*stats.InPayload); ok {
		if w, ok := ctx.Value(wireSizeKey{}).(*wireSize); ok {
			w.last = p.WireLength
		}
	}
}

func (wireSizes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (wireSizes) HandleConn(context.Context, stats.ConnStats) {}

var _ stats.Handler = wireSizes{}

// lastWireSize returns the size of the message the stream of ctx received
// last, 0 when unknown.
func lastWireSize(ctx context.Context) int {
	if w, ok := ctx.Value(wireSizeKey{}).(*wireSize); ok {
		return w.last
	}
	return 0
}
