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
func sortLocations(locs []linematch.Location) {
	slices.SortFunc(locs, func(a, b linematch.Location) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Offset, b.Offset))
	})
}

// Run reads again the lines that lookback searches found and sends those
// that match as uses (Lookback set), and sends counts not sent with a block
// within FlushInterval, until ctx ends (nil) or the queue fails.
func (t *Tracker) Run(ctx context.Context) error {
	tick := time.NewTicker(t.cfg.FlushInterval)
	defer tick.Stop()
	for {
		if j := t.nextJob(); j != nil {
			if err := t.runJob(ctx, j); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.work:
		case <-tick.C:
			if err := t.flush(ctx); err != nil {
				return err
			}
		}
	}
}

// nextJob takes the oldest queued search, marking Run busy.
func (t *Tracker) nextJob() *job {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.jobs) == 0 {
		return nil
	}
	j := t.jobs[0]
	t.jobs[0] = nil
	t.jobs = t.jobs[1:]
	t.busy = true
	return j
}

// flush sends the counts waiting, if any.
func (t *Tracker) flush(ctx context.Context) error {
	t.mu.Lock()
	counts := t.rep.take()
	t.mu.Unlock()
	if len(counts) == 0 {
		return nil
	}
	return t.enqueue(ctx, sender.Items{Counts: counts})
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

// reread is a line read again.
type reread struct {
	loc   linematch.Location
	e     *audit.Event
	kinds linematch.Kind
}

// runJob reads j's lines again, classifies them against j's watches and
// sends the matches; the lines it cannot read are reported lost.
func (t *Tracker) runJob(ctx context.Context, j *job) error {
	defer func() {
		t.mu.Lock()
		for _, no := range j.files {
			if f := t.files.byNo[no]; f != nil {
				f.jobs--
			}
		}
		t.busy = false
		t.signalRoom()
		t.mu.Unlock()
	}()
	found, missed := t.readJob(j)
	var hits []reread
	for _, r := range found {
		if r.kinds = t.classify(j, r); r.kinds != 0 {
			hits = append(hits, r)
		}
	}
	t.mu.Lock()
	var it sender.Items
	for _, h := range hits {
		t.fillOrigin(h)
		if u := t.report(h.e, h.kinds, true); u != nil {
			it.Uses = append(it.Uses, u)
		}
	}
	t.lbHits += uint64(len(hits))
	for _, m := range missed {
		t.lbMisses += m.LinesLost
	}
	t.mu.Unlock()
	it.Losses = missed
	if len(it.Uses)+len(it.Losses) == 0 {
		return nil
	}
	return t.enqueue(ctx, it)
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

// readJob reads j's lines again, file by file in offset order. It returns
// the lines decoded and a loss report per file for those it could not read.
func (t *Tracker) readJob(j *job) ([]reread, []*tokenwatchv1.LossReport) {
	var found []reread
	var losses []*tokenwatchv1.LossReport
	for i := 0; i < len(j.locs); {
		n := i + 1
		for n < len(j.locs) && j.locs[n].File == j.locs[i].File {
			n++
		}
		t.mu.Lock()
		f := t.files.byNo[j.locs[i].File]
		var h file
		if f != nil {
			h = *f
		}
		t.mu.Unlock()
		got, failed, err := readLines(&h, j.locs[i:n])
		found = append(found, got...)
		if failed >= 0 {
			losses = append(losses, lookbackLoss(h, j.locs[i+failed], uint64(n-i-failed), err))
		}
		i = n
	}
	return found, losses
}

// readLines reads locs (one file's, in offset order) from f and decodes
// them; it stops at the first failure and returns its index in locs (-1
// when none) and why.
func readLines(f *file, locs []linematch.Location) ([]reread, int, error) {
	if f.f == nil {
		reason := f.err
		if reason == "" {
			reason = "the file was closed"
		}
		return nil, 0, errors.New(reason)
	}
	var next func(l linematch.Location) ([]byte, error)
	if f.gz {
		zr, err := gzip.NewReader(io.NewSectionReader(f.f, 0, math.MaxInt64))
		if err != nil {
			return nil, 0, fmt.Errorf("read %s again: %w", f.name, err)
		}
		defer zr.Close()
		var pos uint64
		next = func(l linematch.Location) ([]byte, error) { return gzLine(zr, &pos, l) }
	} else {
		next = func(l linematch.Location) ([]byte, error) { return plainLine(f.f, l) }
	}
	var out []reread
	for i, l := range locs {
		line, err := next(l)
		if err != nil {
			return out, i, fmt.Errorf("read %s again at %d: %w", f.name, l.Offset, err)
		}
		e, err := audit.Decode(line)
		if err != nil {
			continue // it decoded when read: the file changed since; not a match
		}
		e.Origin = &audit.Origin{}
		out = append(out, reread{loc: l, e: e})
	}
	return out, -1, nil
}

func plainLine(f *os.File, l linematch.Location) ([]byte, error) {
	b := make([]byte, l.Length)
	if _, err := f.ReadAt(b, int64(l.Offset)); err != nil {
		return nil, err
	}
	return b, nil
}

// gzLine reads l from a decompressing reader at *pos, forward only.
func gzLine(zr io.Reader, pos *uint64, l linematch.Location) ([]byte, error) {
	if l.Offset < *pos {
		return nil, fmt.Errorf("offset %d behind %d", l.Offset, *pos)
	}
	if _, err := io.CopyN(io.Discard, zr, int64(l.Offset-*pos)); err != nil {
		return nil, err
	}
	b := make([]byte, l.Length)
	if _, err := io.ReadFull(zr, b); err != nil {
		return nil, err
	}
	*pos = l.Offset + uint64(l.Length)
	return b, nil
}

func lookbackLoss(f file, at linematch.Location, lines uint64, err error) *tokenwatchv1.LossReport {
	detail := "lines read before a watch arrived that may match it could not be read again"
	if err != nil {
		detail += ": " + err.Error()
	}
	return &tokenwatchv1.LossReport{
		Reason: ReasonLookbackUnavailable, File: f.name, Offset: at.Offset,
		LinesLost: lines, LinesKnown: true, Observed: timestamppb.Now(), Detail: detail,
	}
}

// Drain waits until no line is pinned and no lookback search is pending,
// then returns the counts not sent yet: at the end of a replay, once it
// returns, every use of what was read has been queued but those counts.
func (t *Tracker) Drain(ctx context.Context) (sender.Items, error) {
	for {
		t.mu.Lock()
		done := !t.on || (len(t.pins) == 0 && len(t.jobs) == 0 && !t.busy)
		room := t.room
		if done {
			counts := t.rep.take()
			t.mu.Unlock()
			return sender.Items{Counts: counts}, nil
		}
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return sender.Items{}, ctx.Err()
		case <-room:
		}
	}
}

// TakeCounts returns the counts not sent yet, without waiting.
func (t *Tracker) TakeCounts() sender.Items {
	t.mu.Lock()
	defer t.mu.Unlock()
	return sender.Items{Counts: t.rep.take()}
}
