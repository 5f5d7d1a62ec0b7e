package follow

import (
	"context"
	"log/slog"
	"time"

	"github.com/fsnotify/fsnotify"
)

// waker waits for a change in the log's folder: an fsnotify event wakes it
// early, a poll interval bounds every wait, so a missed or unsupported
// event only costs latency.
type waker struct {
	w        *fsnotify.Watcher
	dir      string
	poll     time.Duration
	watching bool
	log      *slog.Logger
	last     time.Time // when the last wait returned
}

// minGap spaces wake-ups on events: a busy apiserver writes thousands of
// lines a second, each an event, and one read per gap takes them all.
const minGap = 10 * time.Millisecond

func newWaker(dir string, poll time.Duration, log *slog.Logger) *waker {
	k := &waker{dir: dir, poll: poll, log: log}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Info("file events unavailable: polling only", "err", err)
		return k
	}
	k.w = w
	k.watch()
	return k
}

func (k *waker) watch() {
	if k.w == nil || k.watching {
		return
	}
	if err := k.w.Add(k.dir); err == nil {
		k.watching = true
	}
}

func (k *waker) close() {
	if k.w != nil {
		k.w.Close()
	}
}

// wait returns after the next event in the folder or one poll interval,
// or with ctx's error.
func (k *waker) wait(ctx context.Context) error {
	k.watch()
	t := time.NewTimer(k.poll)
	defer t.Stop()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if k.w != nil {
		events, errs = k.w.Events, k.w.Errors
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	case ev, ok := <-events:
		if !ok {
			k.w = nil
			return nil
		}
		k.seen(ev)
		for { // take what else is queued: one wake-up is enough
			select {
			case ev, ok := <-events:
				if !ok {
					k.w = nil
					return nil
				}
				k.seen(ev)
				continue
			default:
			}
			break
		}
		if d := minGap - time.Since(k.last); d > 0 {
			t.Reset(d)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
	case <-errs:
	}
	k.last = time.Now()
	return nil
}

func (k *waker) seen(ev fsnotify.Event) {
	if ev.Name == k.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
		k.watching = false
	}
}
