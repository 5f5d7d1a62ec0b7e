package follow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// errRewritten reports a live file truncated and rewritten in place.
var errRewritten = errors.New("file truncated and rewritten in place")

// handlerError carries an error returned by the Handler out of Run.
type handlerError struct{ err error }

func (e handlerError) Error() string { return e.err.Error() }
func (e handlerError) Unwrap() error { return e.err }

// Run follows the file until ctx ends (returning ctx's error), the handler
// returns an error (returned as is), or, with Once, the end of the file
// (returning nil). Run may be called once.
func (f *Follower) Run(ctx context.Context, h Handler) error {
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("follow: Run called twice")
	}
	f.buf = make([]byte, f.cfg.BlockSize)
	err := f.run(ctx, h)
	var he handlerError
	if errors.As(err, &he) {
		return he.err
	}
	return err
}

func (f *Follower) run(ctx context.Context, h Handler) error {
	if f.cfg.Once {
		return f.runOnce(ctx, h)
	}
	wk := newWaker(f.lay.dir, f.cfg.Poll, f.log)
	defer wk.close()

	var cur *source
	defer func() { cur.close() }()
	var err error
	if cur, err = f.start(ctx, h, wk); err != nil {
		return err
	}
	f.markStarted()
	for {
		if cur, err = f.step(ctx, h, wk, cur); err != nil {
			return err
		}
	}
}

// step reads cur to its current end and decides what to read next. It
// returns the source held from then on (the caller closes it), also along
// with an error.
func (f *Follower) step(ctx context.Context, h Handler, wk *waker, cur *source) (*source, error) {
	err := f.drain(ctx, h, cur)
	if errors.Is(err, errRewritten) {
		return f.replaceTruncated(ctx, h, wk, cur)
	}
	if err != nil {
		if again, err := f.readFailed(ctx, h, wk, cur, err); again || err != nil {
			return cur, err
		}
	}
	if cur.live {
		return f.afterLive(ctx, h, wk, cur)
	}
	return f.afterRotated(ctx, h, wk, cur)
}

// readFailed handles an error reading cur: the handler's and ctx's are
// returned; a plain live file we hold open is read again after a wait
// (again); the rest of another file is reported lost, and the file is
// then finished as usual.
func (f *Follower) readFailed(ctx context.Context, h Handler, wk *waker, cur *source, err error) (again bool, _ error) {
	if errors.As(err, new(handlerError)) || ctx.Err() != nil {
		return false, err
	}
	if cur.live {
		f.warnOnce("read live file", err)
		return true, wk.wait(ctx)
	}
	if err := f.loss(ctx, h, Loss{Reason: ReasonUnreadable, File: cur.path, Offset: cur.off, Detail: err.Error()}); err != nil {
		return false, err
	}
	f.resetBuffer()
	return false, nil
}

// replaceTruncated leaves a file truncated in place for its copy, else for
// the next file to read.
func (f *Follower) replaceTruncated(ctx context.Context, h Handler, wk *waker, cur *source) (*source, error) {
	ns, err := f.truncated(ctx, h, cur)
	if err != nil {
		return cur, err
	}
	cur.close()
	if ns != nil {
		return ns, nil
	}
	return f.next(ctx, h, wk)
}

// afterLive looks at the live name once the live file was read to its
// end: wait for more, or go on after a rotation or a truncation.
func (f *Follower) afterLive(ctx context.Context, h Handler, wk *waker, cur *source) (*source, error) {
	next, err := f.checkLive(ctx, h, cur)
	if err != nil {
		return cur, err
	}
	switch next {
	case stIdle:
		return cur, wk.wait(ctx)
	case stRotated:
		cur.live, cur.rotated, cur.since = false, true, time.Now().UnixNano()
		f.log.Debug("live file rotated away", "id", cur.id.String())
		f.placeRotated(cur)
		return cur, f.notePending(ctx, h)
	case stTruncated:
		return f.replaceTruncated(ctx, h, wk, cur)
	}
	return cur, nil
}

// afterRotated finishes a file that is no longer live, once the writer
// has moved on from it, and opens the next one.
func (f *Follower) afterRotated(ctx context.Context, h Handler, wk *waker, cur *source) (*source, error) {
	if moved, missing := f.liveMovedOn(cur); cur.rotated && !moved && (missing || time.Since(time.Unix(0, cur.since)) < f.rotateGrace) {
		// Deleted without a successor yet: the writer may still hold
		// it (the apiserver writes on into a deleted file until it
		// rotates), so it is followed until a new live file has data.
		return cur, wk.wait(ctx)
	}
	if cur.rotated && !cur.lastRead {
		// The writer has moved on: read once more what it wrote
		// before it did, since the last read.
		cur.lastRead = true
		return cur, nil
	}
	if err := f.finish(ctx, h, cur); err != nil {
		return cur, err
	}
	cur.close()
	return f.next(ctx, h, wk)
}

// runOnce reads the file at Path (plain or compressed) to its end.
func (f *Follower) runOnce(ctx context.Context, h Handler) error {
	gz := strings.HasSuffix(f.cfg.Path, ".gz")
	var cur *source
	var err error
	if gz {
		cur, err = openGzip(f.cfg.Path, 0)
	} else {
		cur, err = openPlain(f.cfg.Path, 0)
	}
	if err != nil {
		return err // names the file
	}
	defer cur.close()
	var off int64
	switch {
	case f.cfg.Resume != nil && cur.matchesID(f.cfg.Resume.ID):
		off = f.cfg.Resume.Offset
	case f.cfg.StartAt == StartEnd && !gz:
		if off, err = lastLineEnd(cur.f, cur.size); err != nil {
			return fmt.Errorf("read %s: %w", cur.path, err)
		}
	case f.cfg.StartAt == StartEnd:
		return nil // the end of a compressed file: nothing to read
	}
	if off > 0 {
		cur.close()
		if gz {
			cur, err = openGzip(f.cfg.Path, off)
		} else {
			cur, err = openPlain(f.cfg.Path, off)
		}
		if err != nil {
			return err // names the file
		}
	}
	if err := f.drain(ctx, h, cur); err != nil {
		return err
	}
	return f.finish(ctx, h, cur)
}

// start opens the first file to read: the checkpointed one, else the live
// file at StartAt. Siblings present now are history unless they come after
// the checkpointed file.
func (f *Follower) start(ctx context.Context, h Handler, wk *waker) (*source, error) {
	live, err := f.openLive(0)
	for err != nil {
		// There but unreadable: wait until it can be read (or is gone)
		// rather than take it for missing, which a checkpoint in it
		// would report as lost.
		f.warnOnce("open live file", err)
		if err := wk.wait(ctx); err != nil {
			return nil, err
		}
		live, err = f.openLive(0)
	}
	sibs, err := f.lay.scan()
	if err != nil {
		live.close()
		return nil, fmt.Errorf("scan %s: %w", f.lay.dir, err)
	}
	if r := f.cfg.Resume; r != nil {
		return f.resume(ctx, h, wk, r, live, sibs)
	}
	f.historyUpTo(sibs)
	if live == nil {
		if err := f.checkpointLost(ctx, h, 0, len(sibs)); err != nil {
			return nil, err
		}
		f.markStarted()
		return f.next(ctx, h, wk)
	}
	if f.cfg.StartAt == StartEnd {
		off, err := lastLineEnd(live.f, live.size)
		if err != nil {
			live.close()
			return nil, fmt.Errorf("read %s: %w", live.path, err)
		}
		if err := live.seek(off); err != nil {
			live.close()
			return nil, err
		}
	}
	if err := f.checkpointLost(ctx, h, live.off, len(sibs)); err != nil {
		live.close()
		return nil, err
	}
	return live, nil
}

// historyUpTo takes the siblings listed at the start for history.
func (f *Follower) historyUpTo(sibs []sibling) {
	if len(sibs) > 0 {
		f.floor, f.hasFloor = sibs[len(sibs)-1].key, true
	}
}

// seek positions a plain source at off.
func (s *source) seek(off int64) error {
	if _, err := s.f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s to %d: %w", s.path, off, err)
	}
	s.off, s.readOff = off, off
	return nil
}

// resume opens the checkpointed file at its offset: the live file, a
// sibling, or, when it is gone, the next file to read.
func (f *Follower) resume(ctx context.Context, h Handler, wk *waker, r *Position, live *source, sibs []sibling) (*source, error) {
	if live != nil && live.matchesID(r.ID) {
		f.historyUpTo(sibs)
		if err := live.seek(r.Offset); err != nil {
			live.close()
			return nil, err
		}
		return live, nil
	}
	if s, ok := find(sibs, r.ID, true); ok {
		src, err := openSibling(s, r.Offset)
		if err == nil {
			live.close()
			f.floor, f.hasFloor = s.key, true
			f.log.Info("resuming in rotated file", "rotated", s.path, "offset", r.Offset)
			if err := f.notePending(ctx, h); err != nil {
				src.close()
				return nil, err
			}
			return src, nil
		}
		f.log.Warn("open checkpointed file", "rotated", s.path, "err", err)
	}
	// Gone, or its inode now holds other data: truncated in place with
	// no copy left, or reused by a newer file. Either way every
	// sibling that may be newer is read (at least once: the
	// aggregator deduplicates), then the live file from its start.
	live.close()
	if err := f.loss(ctx, h, Loss{
		Reason: ReasonRotatedFileGone, File: r.Name, Offset: r.Offset,
		Detail: "the checkpointed file is gone (or truncated in place without a copy); the rest of it was not read",
	}); err != nil {
		return nil, err
	}
	// lumberjack and logrotate delete oldest first: what remains is newer.
	if ok, _, k, fromName := f.lay.parse(baseName(r.Name)); ok && fromName {
		f.floor, f.hasFloor = k, true
	}
	f.markStarted()
	return f.next(ctx, h, wk)
}

// checkpointLost reports, when Config.CheckpointLost, what starting
// without the checkpoint skips: skipped bytes of the live file (before
// StartAt's end) and history siblings not read. Some of it may have been
// delivered before the checkpoint was lost; the rest was written while
// the agent was down.
func (f *Follower) checkpointLost(ctx context.Context, h Handler, skipped int64, history int) error {
	if !f.cfg.CheckpointLost || (skipped == 0 && history == 0) {
		return nil
	}
	detail := fmt.Sprintf("the checkpoint kept before is missing: started at --start-at %s, skipping %d bytes of the live file", f.cfg.StartAt, skipped)
	if history > 0 {
		detail += fmt.Sprintf(" and %d rotated files (not counted in the bytes)", history)
	}
	detail += "; what was written while the agent was down is among them"
	return f.loss(ctx, h, Loss{
		Reason: ReasonCheckpointMissing, File: f.cfg.Path, Bytes: skipped, BytesKnown: true,
		Detail: detail,
	})
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// markStarted tells tests that what exists at the start has been seen.
func (f *Follower) markStarted() {
	if f.started != nil {
		close(f.started)
		f.started = nil
	}
}

// openLive opens the live file at off; nil when it does not exist.
func (f *Follower) openLive(off int64) (*source, error) {
	s, err := openPlain(f.cfg.Path, off)
	if errors.Is(err, os.ErrNotExist) {
		f.noteLive(LiveAbsent, err)
		return nil, nil
	}
	if err != nil {
		f.noteLive(LiveUnreadable, err)
		return nil, err // names the file
	}
	f.noteLive(LivePresent, nil)
	s.live = true
	return s, nil
}

// noteLive records the state of the live file for Stats.
func (f *Follower) noteLive(st LiveState, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	f.updateStats(func(s *Stats) { s.Live, s.LiveErr = st, msg })
}

// next returns the file to read after the current one: the oldest sibling
// newer than the floor that was not read yet, else the live file from its
// start, waiting for one to exist.
func (f *Follower) next(ctx context.Context, h Handler, wk *waker) (*source, error) {
	for {
		// Open the live file before listing: a rotation in between then
		// shows the file we hold among the siblings instead of hiding one.
		live, err := f.openLive(0)
		if err != nil {
			f.warnOnce("open live file", err)
		}
		cands, err := f.candidates(ctx, h)
		if err != nil {
			live.close()
			return nil, err
		}
		for len(cands) > 0 && f.isDone(cands[0]) {
			f.floor, f.hasFloor = cands[0].key, true
			cands = cands[1:]
		}
		if len(cands) > 0 {
			live.close()
			c := cands[0]
			src, err := openSibling(c, 0)
			if errors.Is(err, os.ErrNotExist) {
				continue // renamed or compressed meanwhile: list again
			}
			if err != nil {
				// Unreadable: report it and step over it.
				delete(f.pending, c.path)
				f.floor, f.hasFloor = c.key, true
				if err := f.loss(ctx, h, Loss{Reason: ReasonUnreadable, File: c.path, Bytes: c.size, BytesKnown: !c.gz, Detail: err.Error()}); err != nil {
					return nil, err
				}
				continue
			}
			delete(f.pending, c.path)
			f.floor, f.hasFloor = c.key, true // it is the current file now
			f.updateStats(func(s *Stats) { s.File, s.Offset, s.Size = src.path, 0, c.size })
			return src, nil
		}
		if live != nil {
			f.forgetSeen(live)
			f.updateStats(func(s *Stats) { s.File, s.Offset, s.Size = live.path, 0, live.size })
			return live, nil
		}
		if err := wk.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// candidates lists the siblings to read, oldest first, and reports those
// seen earlier that vanished before they were read.
func (f *Follower) candidates(ctx context.Context, h Handler) ([]sibling, error) {
	// The live name is looked at before listing: a rotation in between
	// then shows the file seen there among the siblings.
	live, lerr := openPlain(f.cfg.Path, 0)
	defer live.close()
	// So are the files seen there earlier: one the live file no longer is
	// was rotated away (renamed, or copied whole and then truncated) before
	// this look, so the listing below shows it unless it was deleted.
	gone := f.notAtLive(live)
	sibs, err := f.lay.scan()
	if err != nil {
		f.warnOnce("scan siblings", err)
		return nil, nil
	}
	f.lastScan = time.Now()
	out, present := f.newer(sibs)
	if err := f.settlePending(ctx, h, sibs, present); err != nil {
		return nil, err
	}
	if lerr == nil || errors.Is(lerr, os.ErrNotExist) {
		// After the siblings: a file seen at the live name is newer.
		if err := f.watchLive(ctx, h, live, gone, sibs); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// newer returns the siblings newer than the floor, oldest first, and
// remembers them as pending; present holds every listed path.
func (f *Follower) newer(sibs []sibling) (out []sibling, present map[string]bool) {
	present = map[string]bool{}
	for _, s := range sibs {
		present[s.path] = true
		if f.hasFloor && s.key.compare(f.floor) <= 0 {
			continue
		}
		if s.gz && present[strings.TrimSuffix(s.path, ".gz")] {
			continue // its plain original is still there and listed first
		}
		out = append(out, s)
		if _, ok := f.pending[s.path]; !ok {
			// Remembered with its identity, to be found again if it is
			// compressed; one that vanished already is seen next time.
			if src, err := openSibling(s, 0); err == nil {
				f.pending[s.path] = entry{sib: s, id: src.id}
				src.close()
			}
		}
	}
	return out, present
}

// settlePending reports the pending siblings that vanished before they
// were read, and counts the bytes of those still waiting.
func (f *Follower) settlePending(ctx context.Context, h Handler, sibs []sibling, present map[string]bool) error {
	var behind int64
	for path, e := range f.pending {
		if f.hasFloor && e.sib.key.compare(f.floor) <= 0 {
			delete(f.pending, path)
			continue
		}
		if present[path] {
			behind += e.sib.size
			continue
		}
		delete(f.pending, path)
		if _, ok := find(sibs, e.id, false); ok && e.id.FPLen > 0 {
			continue // compressed meanwhile: listed under its new name
		}
		l := Loss{Reason: ReasonRotatedFileGone, File: path, Detail: "rotated file deleted before it was read"}
		if !e.sib.gz {
			l.Bytes, l.BytesKnown = e.sib.size, true
		}
		if err := f.loss(ctx, h, l); err != nil {
			return err
		}
	}
	f.pendingBytes = behind
	return nil
}

// notAtLive returns the files remembered at the live name that the file
// there now (nil: none) is not. It looks at the live file's data as it is
// now, so it must come before the listing they are looked for in: a
// copytruncate between a listing and this look would leave them neither
// at the live name nor listed.
func (f *Follower) notAtLive(live *source) []seenFile {
	var gone []seenFile
	for _, e := range f.seen {
		if live == nil || !live.matchesID(e.id) {
			gone = append(gone, e)
		}
	}
	return gone
}

// watchLive remembers the file at the live name (nil: none) while an older
// file is read, and reports a file of gone (notAtLive, taken before sibs
// was listed) that is not among sibs either: rotated away and deleted (or
// truncated in place without a copy) before a listing saw it; one that is
// listed is from now on a sibling like any other. What it held is at least
// the size it had when last seen.
func (f *Follower) watchLive(ctx context.Context, h Handler, live *source, gone []seenFile, sibs []sibling) error {
	lost := slices.DeleteFunc(gone, func(e seenFile) bool { return hasFile(sibs, e.id) })
	f.seen = f.seen[:0]
	if live != nil && live.id.FPLen > 0 {
		// Known by its data only once it has some: an empty file could
		// not be told from another once compressed.
		f.seen = append(f.seen, seenFile{id: live.id, size: live.size})
	}
	for _, e := range lost {
		if err := f.loss(ctx, h, Loss{
			Reason: ReasonRotatedFileGone, File: f.cfg.Path, Bytes: e.size,
			Detail: fmt.Sprintf("a file seen at the live name (%s) was rotated away and deleted (or truncated in place without a copy) before it was listed or read: "+
				"at least %d bytes lost, with any file rotated after it and deleted before the next listing", e.id, e.size),
		}); err != nil {
			return err
		}
	}
	return nil
}

// hasFile reports whether one of sibs holds id's data (under its own inode,
// compressed, or as a copy).
func hasFile(sibs []sibling, id Identity) bool {
	_, ok := find(sibs, id, true)
	return ok
}

// forgetSeen forgets the file seen at the live name once it is read.
func (f *Follower) forgetSeen(src *source) {
	f.seen = slices.DeleteFunc(f.seen, func(e seenFile) bool { return src.matchesID(e.id) })
}

// notePending lists siblings so that one deleted before it is read is
// noticed and reported.
func (f *Follower) notePending(ctx context.Context, h Handler) error {
	_, err := f.candidates(ctx, h)
	return err
}

func (f *Follower) isDone(s sibling) bool {
	for _, id := range f.done {
		if s.matches(id, false) {
			return true
		}
	}
	return false
}

// liveMovedOn reports whether the writer has visibly moved on from a file
// renamed away (the live name holds another, non-empty file), and whether
// the live name is missing.
func (f *Follower) liveMovedOn(cur *source) (moved, missing bool) {
	fi, err := os.Stat(f.cfg.Path)
	if err != nil {
		missing = errors.Is(err, os.ErrNotExist)
		if missing {
			f.noteLive(LiveAbsent, err)
		} else {
			f.noteLive(LiveUnreadable, err)
		}
		return false, missing
	}
	f.noteLive(LivePresent, nil)
	dev, ino := devIno(fi)
	return (dev != cur.id.Dev || ino != cur.id.Ino) && fi.Size() > 0, false
}

// warnOnce logs a recurring problem when it first appears or changes.
func (f *Follower) warnOnce(msg string, err error) {
	key := msg + ": " + err.Error()
	if key == f.lastWarn {
		return
	}
	f.lastWarn = key
	f.log.Warn(msg, "err", err)
}

type liveState int

const (
	stIdle liveState = iota
	stGrew
	stRotated
	stTruncated
)

// checkLive looks at the live name after the held file was read to its end.
func (f *Follower) checkLive(ctx context.Context, h Handler, cur *source) (liveState, error) {
	fi, err := os.Stat(f.cfg.Path)
	if errors.Is(err, os.ErrNotExist) {
		f.noteLive(LiveAbsent, err)
		return stRotated, nil
	}
	if err != nil {
		f.noteLive(LiveUnreadable, err)
		f.warnOnce("stat live file", err)
		return stIdle, nil
	}
	dev, ino := devIno(fi)
	if dev != cur.id.Dev || ino != cur.id.Ino {
		return stRotated, nil
	}
	f.noteLive(LivePresent, nil)
	size := fi.Size()
	cur.size = size
	f.updateStats(func(s *Stats) {
		s.Size = size
		s.Behind = size - cur.off + f.pendingBytes
	})
	if size < cur.readOff {
		return stTruncated, nil
	}
	if cur.id.FPLen > 0 {
		sum, ok, err := fingerprintHandle(cur.f, cur.id.FPLen)
		if err == nil && (!ok || !bytes.Equal(sum, cur.id.FP)) {
			return stTruncated, nil
		}
	}
	if size > cur.readOff {
		return stGrew, nil
	}
	return stIdle, nil
}

// truncated handles a live file truncated in place (copytruncate): the
// data not yet read is in the copy, which holds the same leading bytes;
// read it from where we were, then the live file from its start.
func (f *Follower) truncated(ctx context.Context, h Handler, cur *source) (*source, error) {
	at := cur.off
	sibs, err := f.lay.scan()
	if err != nil {
		f.log.Warn("scan siblings", "err", err)
	}
	f.resetBuffer()
	for i := len(sibs) - 1; i >= 0; i-- {
		s := sibs[i]
		if f.hasFloor && s.key.compare(f.floor) <= 0 {
			break
		}
		if !s.gz && s.dev == cur.id.Dev && s.ino == cur.id.Ino {
			continue // a hard link to the live file itself
		}
		if (!s.gz && s.size < at) || !s.matches(cur.id, true) {
			continue
		}
		src, err := openSibling(s, at)
		if err != nil {
			f.log.Warn("open copy of truncated file", "copy", s.path, "err", err)
			continue
		}
		f.floor, f.hasFloor = s.key, true
		f.log.Info("live file truncated: finishing from its copy", "copy", s.path, "offset", at)
		return src, nil
	}
	f.updateStats(func(s *Stats) { s.Rotations++ })
	if err := f.loss(ctx, h, Loss{
		Reason: ReasonFileTruncated, File: cur.path, Offset: at,
		Detail: "truncated in place and no copy holding the unread data was found",
	}); err != nil {
		return nil, err
	}
	live, err := f.openLive(0)
	if err != nil {
		return nil, err
	}
	return live, nil // nil when gone as well: the caller waits for it
}

// finish ends the current file: a line left open is lost.
func (f *Follower) finish(ctx context.Context, h Handler, cur *source) error {
	var l *Loss
	switch {
	case f.skipping:
		l = &Loss{Reason: ReasonLineTooLong, File: cur.path, Offset: f.skipFrom, Bytes: f.skipBytes + int64(f.n),
			Lines: 1, BytesKnown: true, LinesKnown: true, Detail: "the file ended inside an over-long line"}
		f.updateStats(func(s *Stats) { s.LinesTooLong++ })
	case f.n > 0:
		l = &Loss{Reason: ReasonIncompleteLine, File: cur.path, Offset: cur.off, Bytes: int64(f.n),
			Lines: 1, BytesKnown: true, LinesKnown: true, Detail: "the file ended without a newline"}
	}
	f.resetBuffer()
	if !f.cfg.Once {
		f.updateStats(func(s *Stats) { s.Rotations++ })
	}
	if l != nil {
		if err := f.loss(ctx, h, *l); err != nil {
			return err
		}
	}
	if cur.id.FPLen > 0 || cur.id.Plain() {
		f.done = append(f.done, cur.id)
		if len(f.done) > 16 {
			f.done = f.done[1:]
		}
	}
	// Everything up to it in the order of siblings is read.
	if !cur.hasKey && cur.rotated {
		f.placeRotated(cur)
	}
	if cur.hasKey && (!f.hasFloor || cur.key.compare(f.floor) > 0) {
		f.floor, f.hasFloor = cur.key, true
	}
	return nil
}

// placeRotated finds the file renamed away from the live name among the
// siblings: its place in their order is where reading goes on after it.
func (f *Follower) placeRotated(cur *source) {
	sibs, err := f.lay.scan()
	if err != nil {
		return
	}
	if s, ok := find(sibs, cur.id, false); ok {
		cur.key, cur.hasKey = s.key, true
		if !f.hasFloor || s.key.compare(f.floor) > 0 {
			f.floor, f.hasFloor = s.key, true
		}
	}
}

func (f *Follower) loss(ctx context.Context, h Handler, l Loss) error {
	f.updateStats(func(s *Stats) { s.Losses++ })
	f.log.Debug("audit data lost", "reason", l.Reason, "lost_file", l.File, "offset", l.Offset, "bytes", l.Bytes, "detail", l.Detail)
	if err := h.Loss(ctx, l); err != nil {
		return handlerError{err}
	}
	return nil
}

func (f *Follower) resetBuffer() {
	f.n, f.skipping, f.skipFrom, f.skipBytes = 0, false, 0, 0
	if len(f.buf) > f.cfg.BlockSize {
		f.buf = make([]byte, f.cfg.BlockSize)
	}
}

// drain reads cur to its current end, handing out whole lines.
func (f *Follower) drain(ctx context.Context, h Handler, cur *source) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if f.n == len(f.buf) {
			if err := f.full(ctx, h, cur); err != nil {
				return err
			}
		}
		k, err := cur.r.Read(f.buf[f.n:])
		if k > 0 {
			if err := f.took(ctx, h, cur, k); err != nil {
				return err
			}
		}
		if err == io.EOF || (k == 0 && err == nil) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s at %d: %w", cur.path, cur.readOff, err)
		}
	}
}

// took hands out the whole lines once k more bytes were read into the
// buffer.
func (f *Follower) took(ctx context.Context, h Handler, cur *source, k int) error {
	if cur.live && cur.zr == nil && cur.id.FPLen > 0 {
		// Truncated and rewritten in place since the last look? Then
		// what was just read may be new data at an old offset. Checked
		// after the read: a match proves the read saw the old data.
		sum, ok, ferr := fingerprintHandle(cur.f, cur.id.FPLen)
		if ferr == nil && (!ok || !bytes.Equal(sum, cur.id.FP)) {
			return errRewritten
		}
	}
	f.n += k
	cur.readOff += int64(k)
	if err := f.emit(ctx, h, cur); err != nil {
		return err
	}
	if !cur.live && time.Since(f.lastScan) > f.cfg.Poll {
		// Catch siblings deleted while we are behind.
		return f.notePending(ctx, h)
	}
	return nil
}

// full makes room when the buffer holds part of one line only: it grows up
// to MaxLine+1 bytes, after which the line is skipped (handed to a
// LongLineHandler as it goes).
func (f *Follower) full(ctx context.Context, h Handler, cur *source) error {
	limit := f.cfg.MaxLine + 1
	if !f.skipping && len(f.buf) < limit {
		nb := make([]byte, min(2*len(f.buf), limit))
		copy(nb, f.buf[:f.n])
		f.buf = nb
		return nil
	}
	start := !f.skipping
	if start {
		f.skipping, f.skipFrom, f.skipBytes = true, cur.off, 0
	}
	if lh, ok := h.(LongLineHandler); ok {
		if err := lh.LongLine(ctx, f.buf[:f.n], start); err != nil {
			return handlerError{err}
		}
	}
	f.skipBytes += int64(f.n)
	cur.off += int64(f.n)
	f.n = 0
	return nil
}

// emit hands out the whole lines in the buffer.
func (f *Follower) emit(ctx context.Context, h Handler, cur *source) error {
	if f.skipping {
		i := bytes.IndexByte(f.buf[:f.n], '\n')
		if i < 0 {
			return nil // drain discards the buffer when it is full
		}
		l := Loss{Reason: ReasonLineTooLong, File: cur.path, Offset: f.skipFrom, Bytes: f.skipBytes + int64(i) + 1,
			Lines: 1, BytesKnown: true, LinesKnown: true,
			Detail: fmt.Sprintf("line longer than %d bytes skipped", f.cfg.MaxLine)}
		if lh, ok := h.(LongLineHandler); ok {
			if err := lh.LongLine(ctx, f.buf[:i], false); err != nil {
				return handlerError{err}
			}
			l.Whole = true
		}
		f.consume(cur, i+1)
		f.skipping, f.skipBytes = false, 0
		f.updateStats(func(s *Stats) { s.LinesTooLong++ })
		if err := f.loss(ctx, h, l); err != nil {
			return err
		}
	}
	last := bytes.LastIndexByte(f.buf[:f.n], '\n')
	if last < 0 {
		return nil
	}
	end := cur.off + int64(last) + 1
	if cur.zr == nil && cur.id.FPLen < FPMax && end > int64(cur.id.FPLen) {
		if err := cur.refreshFP(min(int64(FPMax), end)); err != nil {
			return err
		}
	}
	data := f.buf[:last+1]
	b := Block{Pos: Position{ID: cur.id, Name: cur.path, Offset: cur.off}, Data: data, File: cur.f, Compressed: cur.zr != nil}
	if err := h.Block(ctx, b); err != nil {
		return handlerError{err}
	}
	lines := int64(bytes.Count(data, []byte{'\n'}))
	f.consume(cur, last+1)
	now := time.Now()
	behind := f.pendingBytes
	if cur.zr == nil {
		behind += max(0, cur.size-cur.off)
	}
	f.updateStats(func(s *Stats) {
		s.Lines += lines
		s.Bytes += int64(last + 1)
		s.File, s.Offset = cur.path, cur.off
		s.Behind = behind
		s.LastGrowth = now
	})
	return nil
}

// consume drops the first k bytes of the buffer.
func (f *Follower) consume(cur *source, k int) {
	copy(f.buf, f.buf[k:f.n])
	f.n -= k
	cur.off += int64(k)
	if len(f.buf) > 4*f.cfg.BlockSize && f.n <= f.cfg.BlockSize {
		nb := make([]byte, f.cfg.BlockSize)
		copy(nb, f.buf[:f.n])
		f.buf = nb
	}
}
