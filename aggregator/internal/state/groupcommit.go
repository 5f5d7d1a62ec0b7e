package state

import (
	"errors"

	bolt "go.etcd.io/bbolt"
)

// op is one writer's work, waiting to be run in a group transaction.
type op struct {
	fn   func(*bolt.Tx) error
	res  chan error    // the outcome, once
	lead chan struct{} // told to lead the next group
}

// errOp marks which op of a group failed.
type errOp struct {
	i   int
	err error
}

func (e *errOp) Error() string { return e.err.Error() }
func (e *errOp) Unwrap() error { return e.err }

// update runs fn in a read-write transaction and returns once it is
// committed. Writers that arrive while a transaction is in flight are queued
// and run together in the next one (one fsync for all), without any added
// delay when there is no contention. fn may run more than once (when another
// fn of its group fails, each is retried alone), so it must reset whatever it
// reports through captured variables.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	o := &op{fn: fn, res: make(chan error, 1), lead: make(chan struct{}, 1)}
	s.qmu.Lock()
	s.queue = append(s.queue, o)
	leader := !s.leading
	s.leading = true
	s.qmu.Unlock()
	if !leader {
		select {
		case err := <-o.res:
			return err
		case <-o.lead:
		}
	}

	s.qmu.Lock()
	group := s.queue
	s.queue = nil
	s.qmu.Unlock()

	s.runGroup(group)

	s.qmu.Lock()
	if len(s.queue) > 0 {
		s.queue[0].lead <- struct{}{}
	} else {
		s.leading = false
	}
	s.qmu.Unlock()
	return <-o.res
}

func (s *Store) runGroup(group []*op) {
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
			o.res <- err
		}
		return
	}
	// One fn failed: run each alone so the others still commit.
	for _, o := range group {
		o.res <- s.db.Update(o.fn)
	}
}
