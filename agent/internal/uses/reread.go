package uses

import (
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/linematch"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// sortLocations orders locations by file, then offset: reading order.
func sortLocations(locs []linematch.Location) { slices.SortFunc(locs, compareLocations) }

func compareLocations(a, b linematch.Location) int {
	return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Offset, b.Offset))
}

// Run reads again the lines that lookback searches found and sends those
// that match as uses (Lookback set) with their counts, and sends those held
// until their block was queued (hold.go), until ctx ends (nil) or the
// queue fails.
func (t *Tracker) Run(ctx context.Context) error {
	tick := time.NewTicker(t.cfg.FlushInterval)
	defer tick.Stop()
	for {
		if jobs := t.takeJobs(); len(jobs) > 0 {
			if err := t.runJobs(ctx, jobs); err != nil {
				return err
			}
			continue
		}
		if err := t.flush(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.work:
		case <-tick.C:
		}
	}
}

// takeJobs takes the queued searches, marking Run busy: they are run
// together, each block read once for all of them.
func (t *Tracker) takeJobs() []*job {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.jobs) == 0 {
		return nil
	}
	jobs := t.jobs
	t.jobs = nil
	t.busy = true
	return jobs
}

// flush sends the uses and counts held until their block was queued, and
// the counts waiting, if any.
func (t *Tracker) flush(ctx context.Context) error {
	t.mu.Lock()
	it := t.released()
	it.Counts = append(it.Counts, t.rep.take()...)
	t.mu.Unlock()
	if len(it.Uses)+len(it.Counts) == 0 {
		return nil
	}
	return t.enqueue(ctx, it)
}

// enqueue hands it to the queue; a closed queue (the agent is stopping)
// takes nothing more.
func (t *Tracker) enqueue(ctx context.Context, it sender.Items) error {
	err := t.cfg.Queue.EnqueueItems(ctx, it, nil)
	switch {
	case err == nil, errors.Is(err, sender.ErrClosed):
		return nil
	case ctx.Err() != nil:
		return nil
	}
	return fmt.Errorf("queue lineage uses: %w", err)
}

// reread is a line read again that matched a search's watches.
type reread struct {
	loc   linematch.Location // the line (offset only)
	block linematch.Location // its block
	e     *audit.Event
}

// rescanner reads blocks again for the lookback searches: Run's matcher
// and buffer, used only from Run's goroutine.
type rescanner struct {
	m    linematch.Matcher
	hits []linematch.Hit
	buf  []byte
	set  linematch.Set // the watches of the searches run together
}

// runJobs reads again the blocks of jobs, each once, matches them against
// the jobs' new watches and sends the matches; the blocks it cannot read
// are reported lost.
func (t *Tracker) runJobs(ctx context.Context, jobs []*job) error {
	defer t.endJobs(jobs)
	locs := t.rescan.union(jobs)
	found, missed, read := t.readBlocks(locs)
	t.mu.Lock()
	t.rescanned += read
	it := t.reportFound(jobs, found)
	for _, m := range missed {
		t.lbMisses += m.LinesLost
	}
	t.mu.Unlock()
	it.Losses = missed
	if len(it.Uses)+len(it.Counts)+len(it.Losses) == 0 {
		return nil
	}
	return t.enqueue(ctx, it)
}

// endJobs releases the files of jobs and wakes those waiting for them.
func (t *Tracker) endJobs(jobs []*job) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range jobs {
		for _, no := range j.files {
			if f := t.files.byNo[no]; f != nil {
				f.jobs--
			}
		}
	}
	t.busy = false
	t.signalRoom()
}

// union sets r.set to the watches of jobs and returns their blocks, in
// reading order, each once.
func (r *rescanner) union(jobs []*job) []linematch.Location {
	r.set.Reset()
	var locs []linematch.Location
	for _, j := range jobs {
		for _, w := range j.watches {
			_ = r.set.Add(w)
		}
		locs = append(locs, j.locs...)
	}
	sortLocations(locs)
	return slices.Compact(locs)
}

// has reports whether j searches the block l.
func (j *job) has(l linematch.Location) bool {
	_, ok := slices.BinarySearchFunc(j.locs, l, compareLocations)
	return ok
}

// fillOrigin locates h's event by its file's name and fingerprint when
// read. Called with mu held.
func (t *Tracker) fillOrigin(h reread) {
	h.e.Origin.Offset = h.loc.Offset
	if f := t.files.byNo[h.loc.File]; f != nil {
		h.e.Origin.File = f.name
		h.e.Origin.Fingerprint, h.e.Origin.FingerprintLen = f.fp, uint32(max(f.fpLen, 0))
	}
}

// classify returns the watched kinds r matches among j's new watches,
// without those found before (an extended watch's old bounds). Legacy was
// matched when the line was first read.
func (t *Tracker) classify(j *job, r reread) linematch.Kind {
	k := linematch.Classify(r.e, &j.set) &^ linematch.Legacy
	if k == 0 || len(j.old) == 0 {
		return k
	}
	ts, err := time.Parse(time.RFC3339Nano, r.e.RequestReceivedTimestamp)
	jti := lineage.CredentialJTI(r.e.User)
	for _, c := range []struct {
		k   linematch.Kind
		key string
	}{{linematch.Token, jti}, {linematch.ActorCredential, jti}, {linematch.ActorUser, r.e.Username()}} {
		if k&c.k != 0 && j.excluded(c.k, c.key, ts, err == nil, r.loc) {
			k &^= c.k
		}
	}
	return k
}

// readBlocks reads locs again (blocks, in reading order), file by file,
// and matches them against the searches' watches. It returns the lines
// that matched, a loss report per file for the blocks it could not read,
// and the bytes it read.
func (t *Tracker) readBlocks(locs []linematch.Location) ([]reread, []*tokenwatchv1.LossReport, uint64) {
	var found []reread
	var losses []*tokenwatchv1.LossReport
	var read uint64
	for i := 0; i < len(locs); {
		n := i + 1
		for n < len(locs) && locs[n].File == locs[i].File {
			n++
		}
		t.mu.Lock()
		f := t.files.byNo[locs[i].File]
		var h file
		if f != nil {
			h = *f
		}
		t.mu.Unlock()
		var failed int
		var err error
		found, failed, err = t.rescan.file(found, &h, locs[i:n], &read)
		if failed >= 0 {
			losses = append(losses, lookbackLoss(h, locs[i+failed:n], err))
		}
		i = n
	}
	if cap(t.rescan.buf) > 1<<20 {
		t.rescan.buf = nil
	}
	return found, losses, read
}

// file reads locs (one file's blocks, in offset order) from f and appends
// their matches to dst; it stops at the first failure and returns its index
// in locs (-1 when none) and why.
func (r *rescanner) file(dst []reread, f *file, locs []linematch.Location, read *uint64) ([]reread, int, error) {
	if f.f == nil {
		reason := f.err
		if reason == "" {
			reason = "the file was closed"
		}
		return dst, 0, errors.New(reason)
	}
	var next func(l linematch.Location) ([]byte, error)
	if f.gz {
		zr, err := gzip.NewReader(io.NewSectionReader(f.f, 0, math.MaxInt64))
		if err != nil {
			return dst, 0, fmt.Errorf("read %s again: %w", f.name, err)
		}
		defer zr.Close()
		var pos uint64
		next = func(l linematch.Location) ([]byte, error) { return r.gzBlock(zr, &pos, l) }
	} else {
		next = func(l linematch.Location) ([]byte, error) { return r.plainBlock(f.f, l) }
	}
	for i, l := range locs {
		data, err := next(l)
		if err != nil {
			return dst, i, fmt.Errorf("read %s again at %d: %w", f.name, l.Offset, err)
		}
		*read += uint64(len(data))
		r.hits, _ = r.m.Block(r.hits[:0], data, &r.set)
		for k, h := range r.hits {
			r.hits[k].Event = nil
			if h.Kinds&^linematch.Legacy == 0 {
				continue // a legacy-token request alone: matched when first read
			}
			h.Event.Origin = &audit.Origin{}
			dst = append(dst, reread{loc: linematch.Location{File: l.File, Offset: l.Offset + uint64(h.Offset)}, block: l, e: h.Event})
		}
	}
	return dst, -1, nil
}

// buffer returns r.buf resized to n bytes.
func (r *rescanner) buffer(n uint32) []byte {
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	return r.buf[:n]
}

func (r *rescanner) plainBlock(f *os.File, l linematch.Location) ([]byte, error) {
	b := r.buffer(l.Length)
	if _, err := f.ReadAt(b, int64(l.Offset)); err != nil {
		return nil, err
	}
	return b, nil
}

// gzBlock reads l from a decompressing reader at *pos, forward only.
func (r *rescanner) gzBlock(zr io.Reader, pos *uint64, l linematch.Location) ([]byte, error) {
	if l.Offset < *pos {
		return nil, fmt.Errorf("offset %d behind %d", l.Offset, *pos)
	}
	if _, err := io.CopyN(io.Discard, zr, int64(l.Offset-*pos)); err != nil {
		return nil, err
	}
	b := r.buffer(l.Length)
	if _, err := io.ReadFull(zr, b); err != nil {
		return nil, err
	}
	*pos = l.Offset + uint64(l.Length)
	return b, nil
}

// lookbackLoss reports the blocks lost that a search could not read
// again: their bytes, and at least one line each.
func lookbackLoss(f file, lost []linematch.Location, err error) *tokenwatchv1.LossReport {
	detail := "blocks read before a watch arrived that may hold matches of it could not be read again"
	if err != nil {
		detail += ": " + err.Error()
	}
	var bytes uint64
	for _, l := range lost {
		bytes += uint64(l.Length)
	}
	return &tokenwatchv1.LossReport{
		Reason: ReasonLookbackUnavailable, File: f.name, Offset: lost[0].Offset,
		BytesLost: bytes, BytesKnown: true, LinesLost: uint64(len(lost)),
		Observed: timestamppb.Now(), Detail: detail,
	}
}

// Drain waits until a stream has applied its first reset (the watches the
// aggregator already held, which search what was read before), no line is
// pinned and no lookback search is pending, then returns the uses and
// counts not sent yet: at the end of a replay, once it returns, every use
// of what was read has been queued but those. Those of a block whose items
// are not queued stay held. It does not wait for the later parts of a
// watch set split over several updates, which end at the stream's first
// acknowledgement: a replay that sent nothing gets none.
func (t *Tracker) Drain(ctx context.Context) (sender.Items, error) {
	for {
		t.mu.Lock()
		done := !t.on || (t.welcomed && !t.awaiting && len(t.pins) == 0 && len(t.jobs) == 0 && !t.busy)
		room := t.room
		if done {
			it := t.released()
			it.Counts = append(it.Counts, t.rep.take()...)
			t.mu.Unlock()
			return it, nil
		}
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return sender.Items{}, ctx.Err()
		case <-room:
		}
	}
}

// TakeCounts returns the uses and counts not sent yet, without waiting,
// when reading stops: those held for a block whose items were never
// queued are dropped (the checkpoint is before it; a restart reads it
// again).
func (t *Tracker) TakeCounts() sender.Items {
	t.mu.Lock()
	defer t.mu.Unlock()
	it := t.released()
	it.Counts = append(it.Counts, t.rep.take()...)
	t.dropUnqueued()
	return it
}
