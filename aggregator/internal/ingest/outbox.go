package ingest

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// DefaultMaxPendingWatches is Options.MaxPendingWatches when 0.
const DefaultMaxPendingWatches = 1 << 17

// outbox is a stream's one sending path after its Welcome: acks and watch
// updates are queued in order and one writer goroutine (run) sends them,
// since gRPC allows one Send at a time. Watch updates are queued without
// waiting, so a stream that does not read never holds up a batch of
// another stream; an ack waits until it is sent, so the committer keeps
// one ack in flight and a stopping server acknowledges what it committed.
//
// The watches of published updates waiting in the queue are bounded
// (limit): a stream that falls further behind is failed instead (its
// queue dropped) and ended, and its agent receives the whole set again
// when it reconnects. The stream's first updates, its full set, are not
// counted: they are the set a new stream needs whatever its size.
type outbox struct {
	stream sender
	limit  int
	m      *metrics

	mu      sync.Mutex
	queue   []outItem
	pending int  // watches of the queued published updates
	closed  bool // no more sends: the stream is over
	err     error
	wake    chan struct{} // cap 1: the writer has something to do
	gone    chan struct{} // closed with err set: nothing more is sent
}

// sender sends a message on a stream: the server stream (its Send).
type sender interface {
	Send(*tokenwatchv1.StreamResponse) error
}

// outItem is one queued message: watches counts those it carries against
// the limit; sent, for an ack, is closed once it is sent.
type outItem struct {
	msg     *tokenwatchv1.StreamResponse
	watches int
	sent    chan struct{}
}

func newOutbox(stream sender, limit int, m *metrics) *outbox {
	return &outbox{stream: stream, limit: limit, m: m, wake: make(chan struct{}, 1), gone: make(chan struct{})}
}

// run sends the queued messages in order until the outbox is closed or a
// Send fails. It is the only caller of the stream's Send after the Welcome.
func (o *outbox) run() {
	for {
		it, ok := o.next()
		if !ok {
			return
		}
		if it.msg.GetWatch() != nil {
			o.m.watchUpdates.Inc() // before the agent may see it
		}
		if err := o.stream.Send(it.msg); err != nil {
			o.fail(err)
			return
		}
		if it.sent != nil {
			close(it.sent)
		}
	}
}

// next waits for the next message to send; ok is false once the outbox is
// closed or failed.
func (o *outbox) next() (outItem, bool) {
	for {
		o.mu.Lock()
		if o.closed || o.err != nil {
			o.mu.Unlock()
			return outItem{}, false
		}
		if len(o.queue) > 0 {
			it := o.queue[0]
			o.queue[0] = outItem{}
			o.queue = o.queue[1:]
			o.pending -= it.watches
			o.mu.Unlock()
			return it, true
		}
		o.mu.Unlock()
		<-o.wake
	}
}

// enqueue adds items to the queue; counted says whether their watches
// count against the limit. It reports false, queueing nothing, when the
// outbox has stopped or the limit would be passed.
func (o *outbox) enqueue(items []outItem, counted bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || o.err != nil {
		return false
	}
	n := 0
	for _, it := range items {
		n += it.watches
	}
	if !counted {
		n = 0
	} else if o.pending+n > o.limit {
		return false
	}
	start := len(o.queue)
	o.queue = append(o.queue, items...)
	if !counted {
		for i := start; i < len(o.queue); i++ {
			o.queue[i].watches = 0
		}
	}
	o.pending += n
	o.signal()
	return true
}

// signal wakes the writer. Called with mu held.
func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// ack sends an acknowledgement of the batches up to seq after the messages
// queued before it, and waits until it is sent.
func (o *outbox) ack(ctx context.Context, seq uint64) error {
	sent := make(chan struct{})
	it := outItem{msg: &tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: seq}}}, sent: sent}
	if !o.enqueue([]outItem{it}, false) {
		return o.stopped()
	}
	select {
	case <-sent:
		return nil
	case <-o.gone:
		return o.stopped()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// stopped is the error of an outbox that sends no more.
func (o *outbox) stopped() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	return status.Error(codes.Canceled, "stream closed")
}

// fail stops the outbox with err, dropping what is queued; the first
// error stays.
func (o *outbox) fail(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return
	}
	o.err = err
	o.queue, o.pending = nil, 0
	close(o.gone)
	o.signal()
}

// close stops the writer once the stream is over; what is still queued is
// not sent.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.queue, o.pending = nil, 0
	o.signal()
}

// errWatchOverflow ends a stream whose agent fell too far behind the
// watch updates.
var errWatchOverflow = status.Error(codes.ResourceExhausted,
	"lineage watch updates not read in time: stream ended; reconnect to receive the watch set again")
