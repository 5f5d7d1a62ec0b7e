package state

import (
	"errors"

	bolt "go.etcd.io/bbolt"
)

// op is one writer's work, waiting to be run in a group transaction.
type op struct {
	fn      func(*bolt.Tx) error
	after   func()        // run once fn's transaction committed (may be nil)
	res     chan error    // the outcome, once
	lead    chan struct{} // told to lead the next group
	waiting bool          // its owner waits (guarded by qmu)
}

// errOp marks which op of a group failed.
type errOp struct {
	i   int
	err error
}

func (e *errOp) Error() string { return e.err.Error() }
func (e *errOp) Unwrap() error { return e.err }

// update runs fn in a read-write transaction and returns once it is
// committed. See enqueue and await.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	return s.await(s.enqueue(fn, nil))
}

// enqueue queues fn for the next group transaction. Queued functions run in
// queue order. fn may run more than once (when another fn of its group
// fails, each is retried alone), so it must reset whatever it reports
// through captured variables.
func (s *Store) enqueue(fn func(*bolt.Tx) error, after func()) *op {
	o := &op{fn: fn, after: after, res: make(chan error, 1), lead: make(chan struct{}, 1)}
	s.qmu.Lock()
	s.queue = append(s.queue, o)
	s.qmu.Unlock()
	return o
}

// await returns o's outcome once its transaction committed. Writers that
// arrive while a transaction is in flight run together in the next one (one
// fsync for all), without any added delay when there is no contention: the
// first waiter leads, runs everything queued, then hands over to the next
// waiting writer.
func (s *Store) await(o *op) error {
	s.qmu.Lock()
	if s.leading {
		o.waiting = true
		s.qmu.Unlock()
		select {
		case err := <-o.res:
			return err
		case <-o.lead:
		}
		s.qmu.Lock()
	}
	s.leading = true
	group := s.queue
	s.queue = nil
	s.qmu.Unlock()

	s.runGroup(group)

	s.qmu.Lock()
	s.leading = false
	for _, next := range s.queue {
		if next.waiting {
			s.leading = true
			next.lead <- struct{}{}
			break
		}
	}
	s.qmu.Unlock()
	return <-o.res
}

func (s *Store) runGroup(group []*op) {
	if len(group) == 0 {
		return
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i, o := range group {
			if err := o.fn(tx); err != nil {
				return &errOp{i: i, err: err}
			}
		}
		return nil
	})
	var eo *errOp
	if err == nil || len(group) == 1 || !errors.As(err, &eo) {
		if eo != nil {
			err = eo.err
		}
		for _, o := range group {
			o.done(err)
		}
		return
	}
	// One fn failed: run each alone so the others still commit.
	for _, o := range group {
		o.done(s.db.Update(o.fn))
	}
}

func (o *op) done(err error) {
	if err == nil && o.after != nil {
		o.after()
	}
	o.res <- err
}
