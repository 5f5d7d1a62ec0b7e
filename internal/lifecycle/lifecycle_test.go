package lifecycle

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// journal records what the components did, in order.
type journal struct {
	mu  sync.Mutex
	got []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	j.got = append(j.got, s)
	j.mu.Unlock()
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.got...)
}

// recorder runs until its context is cancelled and journals its shutdown.
type recorder struct {
	name    string
	j       *journal
	started chan struct{}
	fail    error // Run returns it at once when set
	stopErr error
}

func newRecorder(name string, j *journal) *recorder {
	return &recorder{name: name, j: j, started: make(chan struct{})}
}

func (r *recorder) Run(ctx context.Context) error {
	close(r.started)
	if r.fail != nil {
		return r.fail
	}
	<-ctx.Done()
	r.j.add(r.name + " stopped")
	return nil
}

func (r *recorder) Shutdown(context.Context) error {
	r.j.add(r.name + " shutdown")
	return r.stopErr
}

func TestReverseOrder(t *testing.T) {
	j := &journal{}
	var g Group
	a, b, c := newRecorder("a", j), newRecorder("b", j), newRecorder("c", j)
	for _, r := range []*recorder{a, b, c} {
		g.Add(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.Start(ctx)
	for _, r := range []*recorder{a, b, c} {
		<-r.started
	}
	cancel()
	if err := g.Wait(ctx); err != nil {
		t.Fatalf("Wait after cancel = %v, want nil", err)
	}
	if err := g.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown = %v, want nil", err)
	}
	want := []string{"c shutdown", "c stopped", "b shutdown", "b stopped", "a shutdown", "a stopped"}
	if diff := cmp.Diff(want, j.list()); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
	if err := g.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown = %v, want nil", err)
	}
	if diff := cmp.Diff(want, j.list()); diff != "" {
		t.Errorf("second Shutdown did something (-want +got):\n%s", diff)
	}
}

func TestFailureEndsWait(t *testing.T) {
	j := &journal{}
	var g Group
	a, b := newRecorder("a", j), newRecorder("b", j)
	b.fail = errors.New("b broke")
	a.stopErr = errors.New("a shutdown failed")
	g.Add(a)
	g.Add(b)
	g.Start(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Wait(ctx); err != b.fail {
		t.Fatalf("Wait = %v, want %v", err, b.fail)
	}
	err := g.Shutdown(context.Background())
	if want := "b broke\na shutdown failed"; err == nil || err.Error() != want {
		t.Errorf("Shutdown = %v, want %q", err, want)
	}
}

func TestShutdownBeforeStart(t *testing.T) {
	j := &journal{}
	var g Group
	g.Add(newRecorder("a", j))
	g.Add(newRecorder("b", j))
	if err := g.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown before Start = %v, want nil", err)
	}
	g.Start(context.Background()) // does nothing now
	if diff := cmp.Diff([]string{"b shutdown", "a shutdown"}, j.list()); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
}

func TestFunc(t *testing.T) {
	var g Group
	ran := make(chan struct{})
	g.Add(Func(func(ctx context.Context) error {
		close(ran)
		<-ctx.Done()
		return nil
	}))
	g.Start(context.Background())
	<-ran
	if err := g.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown = %v, want nil", err)
	}
}
