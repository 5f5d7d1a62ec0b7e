// Package lifecycle runs a program's components: started in dependency
// order, each in one goroutine the Group owns, and stopped in reverse order
// under one deadline.
package lifecycle

import (
	"context"
	"errors"
	"sync"
)

// Component is a part of a program that runs until it is shut down.
type Component interface {
	// Run does the component's work until ctx is cancelled or Shutdown
	// stops it; it returns nil then, or the error it failed with.
	Run(ctx context.Context) error
	// Shutdown stops the component gracefully, giving up when ctx ends.
	// It is safe to call twice and before Run.
	Shutdown(ctx context.Context) error
}

// Func is a Component that stops when Run's context is cancelled; its
// Shutdown does nothing.
type Func func(ctx context.Context) error

// Run calls f.
func (f Func) Run(ctx context.Context) error { return f(ctx) }

// Shutdown does nothing: the Group cancels Run's context.
func (Func) Shutdown(context.Context) error { return nil }

// Group runs components. Add them in dependency order (a component after
// those it uses), then Start, Wait and Shutdown. The zero Group is ready.
type Group struct {
	parts []*part

	mu    sync.Mutex
	state int // idle, running or stopped

	failOnce sync.Once
	failed   chan struct{} // closed at the first failure
	first    int           // index of the part that failed first
}

const (
	idle = iota
	running
	stopped
)

// part is one component and the goroutine that runs it.
type part struct {
	c      Component
	cancel context.CancelFunc // cancels Run's context
	done   chan struct{}      // closed when Run has returned
	err    error              // Run's error; read after done
}

// Add appends c. Components are added before Start.
func (g *Group) Add(c Component) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.parts = append(g.parts, &part{c: c})
}

func (g *Group) init() {
	if g.failed == nil {
		g.failed = make(chan struct{})
	}
}

// Start runs each component's Run in a goroutine of its own, in the order
// added. Their contexts keep ctx's values but not its cancellation: a
// component stops when Shutdown stops it. Start does nothing after the
// first call or after Shutdown.
func (g *Group) Start(ctx context.Context) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	if g.state != idle {
		return
	}
	g.state = running
	base := context.WithoutCancel(ctx)
	for i, p := range g.parts {
		var rctx context.Context
		rctx, p.cancel = context.WithCancel(base)
		p.done = make(chan struct{})
		go func() {
			defer close(p.done)
			if err := p.c.Run(rctx); err != nil {
				p.err = err
				g.failOnce.Do(func() {
					g.first = i
					close(g.failed)
				})
			}
		}()
	}
}

// Wait blocks until ctx is done, returning nil, or until a component's
// Run fails, returning its error.
func (g *Group) Wait(ctx context.Context) error {
	g.mu.Lock()
	g.init()
	g.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil
	case <-g.failed:
		return g.parts[g.first].err
	}
}

// Shutdown stops the components in reverse order, all under ctx: for each,
// Shutdown(ctx), then the cancellation of Run's context, then the wait for
// Run to return. It returns the first failure, then the components' other
// errors in the order they stopped. It is safe to call twice (the second
// call returns nil) and before Start (each component's Shutdown is called,
// so that it releases what it holds).
func (g *Group) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.init()
	state := g.state
	g.state = stopped
	g.mu.Unlock()
	if state == stopped {
		return nil
	}
	var errs []error
	first := -1
	select {
	case <-g.failed:
		first = g.first
		errs = append(errs, g.parts[first].err)
	default:
	}
	for i := len(g.parts) - 1; i >= 0; i-- {
		p := g.parts[i]
		serr := p.c.Shutdown(ctx)
		if state == running {
			p.cancel()
			<-p.done
			if p.err != nil && i != first {
				errs = append(errs, p.err)
			}
		}
		if serr != nil {
			errs = append(errs, serr)
		}
	}
	return errors.Join(errs...)
}
