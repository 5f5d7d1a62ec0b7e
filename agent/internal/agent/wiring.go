package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwatch/tokenwatch/agent/internal/checkpoint"
	"github.com/tokenwatch/tokenwatch/agent/internal/metrics"
	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/agent/internal/uses"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/lifecycle"
	"github.com/tokenwatch/tokenwatch/internal/version"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// agent is one run of the agent: its parts and the components that run
// them. The components, in dependency order (stopped in reverse):
//
//	metrics HTTP   /metrics, /healthz, /readyz (when --metrics-addr)
//	audit-log      warns when the live audit log goes missing (not --once)
//	checkpointer   saves the acknowledged position periodically (with a state dir)
//	delivery       the sender: streams to the aggregator, delivers what it holds on shutdown
//	lineage        re-reads the lines lookback searches find; flushes use counts
//	following      the follower: reads the audit log into the sender
//
// So a stop stops following, then delivers for up to ShutdownTimeout; the
// checkpoint is saved at the last acknowledgement once all have stopped.
type agent struct {
	c      Config
	log    *slog.Logger
	store  checkpoints // nil without a state dir
	resume *follow.Position
	starts checkpoint.Starts // kept with resume
	p      *pipeline
	lin    *uses.Tracker

	following *following
	delivery  *delivery
	g         lifecycle.Group
}

// newAgent builds the agent's parts; nothing runs yet.
func newAgent(c Config) (*agent, error) {
	a := &agent{c: c, log: c.Logger}
	creds, err := transport(c)
	if err != nil {
		return nil, err
	}
	lost, err := a.openStore()
	if err != nil {
		return nil, err
	}
	fol, err := newReader(c, a.resume, lost, a.log)
	if err != nil {
		return nil, fmt.Errorf("--audit-log: %w", err)
	}
	a.p = &pipeline{store: a.store, log: a.log, needFirst: a.store != nil && a.resume == nil}
	a.lin = uses.New(uses.Config{Logger: a.log})
	a.lin.RestoreStarts(a.starts.Key, a.starts.Hashes)
	a.p.lin = a.lin
	var giveUp time.Duration
	if c.Once {
		giveUp = c.OnceTimeout
	}
	pw := newPolicyWatch(c.AuditPolicyFile, a.log)
	var fw *formatWatch // a replay reads files of the past
	var rw *rotationWatch
	if !c.Once {
		fw = newFormatWatch(c.AuditLog, a.log)
		rw = newRotationWatch(c.AuditLog, a.log)
	}
	snd, err := sender.New(sender.Config{
		Target:      c.Aggregator,
		Credentials: creds,
		Hello: &tokenwatchv1.Hello{
			Cluster: c.Cluster, Node: c.NodeName, AgentVersion: version.Version,
			Replay: c.Once, SessionId: sessionID(),
		},
		GiveUpAfter: giveUp,
		Status:      status(fol, fw, rw, pw),
		OnAck:       a.p.onAck,
		Classify:    classifier(c),
		Lineage:     a.lin,
		Logger:      a.log,
	})
	if err != nil {
		return nil, err
	}
	a.p.snd = snd
	a.lin.SetQueue(snd)
	var certs map[string]string
	if !c.Insecure {
		certs = map[string]string{"client": c.TLSCert, "ca": c.TLSCA}
	}
	src := metrics.Sources{Follow: fol.Stats, Send: snd.Stats, Lineage: a.lin.Stats, Certificates: certs}
	if pw != nil {
		src.AuditPolicy = pw.state
	}
	if fw != nil {
		src.AuditLogJSON = func() bool { return fw.check() == "" }
		src.AuditLogRotation = rw.check
	}
	a.p.m = metrics.New(src)
	a.delivery = &delivery{snd: snd, log: a.log, done: make(chan struct{})}
	a.following = &following{fol: fol, p: a.p, snd: snd, lin: a.lin, log: a.log, path: c.AuditLog}
	if err := a.components(fol, snd); err != nil {
		return nil, err
	}
	return a, nil
}

// openStore opens the checkpoint store of the state dir, if any, and loads
// where to resume. lost says a checkpoint kept before is missing.
func (a *agent) openStore() (lost bool, err error) {
	if a.c.StateDir == "" {
		return false, nil
	}
	open := a.c.openCheckpoints
	if open == nil {
		open = openCheckpoints
	}
	if a.store, err = open(a.c.StateDir); err != nil {
		return false, err
	}
	a.resume, a.starts, err = a.store.LoadStarts()
	if errors.Is(err, checkpoint.ErrBadStarts) {
		// The position is good: a long-running request whose start was
		// read before may count twice.
		a.log.Warn("checkpoint's lineage starts ignored", "err", err)
		return false, nil
	}
	if errors.Is(err, checkpoint.ErrMissing) {
		// Deleted: start at --start-at, and report what that skips.
		a.log.Warn("checkpoint missing although one was kept before; what --start-at skips is reported as lost", "err", err)
		return true, nil
	}
	return false, err
}

// components lists the components in dependency order.
func (a *agent) components(fol reader, snd *sender.Sender) error {
	c := a.c
	if c.MetricsAddr != "" {
		lis, err := net.Listen("tcp", c.MetricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr %s: %w", c.MetricsAddr, err)
		}
		// Ready: the audit log can be read and the aggregator is connected.
		ready := func() error {
			if err := auditLogProblem(c.AuditLog, fol.Stats()); err != nil {
				return err
			}
			if !snd.Ready() {
				return errors.New("not connected to the aggregator")
			}
			return nil
		}
		a.g.Add(lifecycle.Func(func(ctx context.Context) error {
			if err := metrics.ServeListener(ctx, lis, a.p.m.Handler(ready)); err != nil {
				a.log.Error("metrics endpoint stopped", "err", err)
			}
			return nil
		}))
	}
	if !c.Once {
		a.g.Add(lifecycle.Func(func(ctx context.Context) error {
			watchAuditLog(ctx, c.AuditLog, fol.Stats, a.log)
			return nil
		}))
	}
	if a.store != nil {
		a.g.Add(lifecycle.Func(func(ctx context.Context) error {
			a.p.saveEvery(ctx, c.CheckpointInterval)
			return nil
		}))
	}
	a.g.Add(a.delivery)
	a.g.Add(lifecycle.Func(a.lin.Run))
	a.g.Add(a.following)
	return nil
}

// run starts the components and stops them on a stop signal, a failure,
// or, with Once, when everything read is acknowledged.
func (a *agent) run(ctx context.Context) error {
	c := a.c
	a.logStart()
	wctx, finished := context.WithCancel(ctx)
	defer finished()
	a.delivery.onDone = finished
	a.g.Start(ctx)
	if err := a.g.Wait(wctx); err == nil && ctx.Err() != nil && !a.following.readAll.Load() {
		a.log.Info("stopping: delivering what was read", "timeout", c.ShutdownTimeout.String())
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.ShutdownTimeout)
	defer cancel()
	runErr := a.g.Shutdown(sctx)
	a.lin.Close()
	complete := a.following.readAll.Load() && !a.delivery.gaveUp.Load()
	if c.Once && runErr == nil && !complete {
		runErr = errors.New("--once replay interrupted by a stop signal before everything was read and acknowledged")
	}
	if a.store != nil {
		if err := a.p.save(); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	st := a.following.fol.Stats()
	ss := a.delivery.snd.Stats()
	a.log.Info("agent stopped", "lines_read", st.Lines, "events_sent", ss.EventsSent, "events_acked", ss.EventsAcked,
		"unacked_events", ss.UnackedEvents, "losses", st.Losses)
	return runErr
}

// logStart logs what the agent is about to do.
func (a *agent) logStart() {
	c := a.c
	args := []any{"version", version.Version, "cluster", c.Cluster, "node", c.NodeName, "aggregator", c.Aggregator,
		"audit_log", c.AuditLog, "once", c.Once, "mtls", !c.Insecure, "state_dir", c.StateDir}
	if a.resume != nil {
		args = append(args, "resume_file", a.resume.Name, "resume_offset", a.resume.Offset)
	} else {
		args = append(args, "start_at", c.StartAt)
	}
	a.log.Info("agent starting", args...)
	warnValidity(c)
}

// following is the follower as a component: it reads the audit log into
// the pipeline until stopped, or, with Once, to its end, closing the
// sender then.
type following struct {
	fol  reader
	p    *pipeline
	snd  *sender.Sender
	lin  *uses.Tracker
	log  *slog.Logger
	path string

	readAll atomic.Bool // the follower read to the end (Once)
}

// Run follows until ctx is cancelled (nil) or the follower fails.
func (f *following) Run(ctx context.Context) error {
	err := f.fol.Run(ctx, f.p)
	if f.p.long != nil { // the follower stopped inside an over-long line
		f.p.long.Close()
		f.p.long = nil
	}
	switch {
	case ctx.Err() != nil:
		f.flushCounts(ctx)
		return nil // stopped
	case err != nil:
		return fmt.Errorf("follow %s: %w", f.path, err)
	}
	// Every use of what was read is found once the token creates are
	// acknowledged (their watches arrive before) and the lookback
	// searches they caused are done; then the counts go last.
	it, err := f.lin.Drain(ctx)
	if err != nil {
		return nil // stopped while waiting
	}
	if err := f.snd.EnqueueItems(ctx, it, nil); err != nil && ctx.Err() == nil {
		return fmt.Errorf("queue lineage counts: %w", err)
	}
	f.readAll.Store(true)
	f.log.Info("read to the end; waiting for acknowledgements")
	f.snd.Close()
	return nil
}

// flushCounts queues the lineage uses and counts not sent yet when
// following stops, if the sender has room for them at once (ctx has
// ended): delivery sends them with the rest.
func (f *following) flushCounts(ctx context.Context) {
	if it := f.lin.TakeCounts(); len(it.Uses)+len(it.Counts) > 0 {
		_ = f.snd.EnqueueItems(ctx, it, nil)
	}
}

// Shutdown does nothing: the Group cancels Run's context.
func (f *following) Shutdown(context.Context) error { return nil }

// delivery is the sender as a component. Its Shutdown closes the sender and
// waits, until ctx ends, for it to deliver what it holds.
type delivery struct {
	snd    *sender.Sender
	log    *slog.Logger
	onDone func() // called when the sender is closed and everything is acknowledged

	mu      sync.Mutex
	cancel  context.CancelFunc // cancels Run; nil before Run
	stopped bool
	done    chan struct{} // closed when Run returns

	gaveUp atomic.Bool // Shutdown stopped the sender before everything was acknowledged
}

// Run streams until the sender is closed and drained (nil), Shutdown gives
// up on it (nil), or it fails.
func (d *delivery) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.cancel = cancel
	d.mu.Unlock()
	defer close(d.done)
	err := d.snd.Run(ctx)
	switch {
	case err == nil:
		if d.onDone != nil {
			d.onDone()
		}
		return nil
	case errors.Is(err, context.Canceled):
		return nil
	}
	return err
}

// Shutdown closes the sender and waits for it to deliver what it holds;
// when ctx ends first it stops the sender, leaving the checkpoint before
// what is not acknowledged.
func (d *delivery) Shutdown(ctx context.Context) error {
	d.snd.Close()
	d.mu.Lock()
	d.stopped = true
	cancel := d.cancel
	d.mu.Unlock()
	if cancel == nil {
		return nil // never ran
	}
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
	}
	cancel()
	<-d.done
	if !d.gaveUp.Swap(true) {
		n := d.snd.Stats().UnackedEvents
		d.log.Warn("stopped before the aggregator acknowledged everything; the checkpoint stays before it", "unacked_events", n)
	}
	return nil
}
