package follow

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// waitLive waits until f reports the live file in state want.
func waitLive(t *testing.T, f *Follower, want LiveState) Stats {
	t.Helper()
	st, ok := waitStats(f, func(st Stats) bool { return st.Live == want })
	if !ok {
		t.Fatalf("Stats().Live = %q (%s), want %q", st.Live, st.LiveErr, want)
	}
	return st
}

// waitStats waits up to 10 s for f's Stats to satisfy cond and returns the
// last Stats read, and whether they did. Stats change after the handler
// has returned, so a test that saw the lines must still wait for them.
func waitStats(f *Follower, cond func(Stats) bool) (Stats, bool) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := f.Stats()
		if cond(st) {
			return st, true
		}
		if time.Now().After(deadline) {
			return st, false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A live file whose folder does not exist yet is reported absent, then
// present and read once it appears.
func TestLiveAbsent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet")
	path := filepath.Join(dir, "audit.log")
	rec := newRecorder()
	f, _ := runFollower(t, Config{Path: path, StartAt: StartBeginning}, rec)
	if st := waitLive(t, f, LiveAbsent); st.LiveErr == "" {
		t.Error("absent without a reason")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, lines("a", 0, 3, 100)...)
	rec.waitLines(t, 3)
	waitLive(t, f, LivePresent)
}

// A live file that is there but cannot be opened keeps the follower
// waiting, reporting it unreadable, instead of ending Run.
func TestLiveUnreadable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	if err := os.Symlink("audit.log", path); err != nil { // a loop: ELOOP
		t.Fatal(err)
	}
	f, err := New(Config{Path: path, StartAt: StartBeginning, Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, rec) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	st := waitLive(t, f, LiveUnreadable)
	if st.LiveErr == "" {
		t.Error("unreadable without a reason")
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended on an unreadable live file: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, lines("a", 0, 2, 100)...)
	rec.waitLines(t, 2)
	waitLive(t, f, LivePresent)
}
