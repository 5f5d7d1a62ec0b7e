package uses

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	jtiA = "0b6a1c8e-3f0e-4b8e-9a43-5d2f3c1e7a01"
	jtiB = "7d2e9f40-1c3b-4e5a-8f6d-2b1a0c9e8d02"
)

// req is a request line to write into a test log.
type req struct {
	id, user, jti, ip, verb, resource, sub, ns, legacy string
	code                                               int
	stage                                              string    // "": ResponseComplete
	at                                                 time.Time // received; zero: 2026-11-26T23:09:25.383216Z
}

func (r req) line() string {
	extra := ""
	if r.jti != "" {
		extra = `,"extra":{"authentication.kubernetes.io/credential-id":["JTI=` + r.jti + `"]}`
	}
	ann := ""
	if r.legacy != "" {
		ann = `,"annotations":{"authentication.k8s.io/legacy-token":"` + r.legacy + `"}`
	}
	user := r.user
	if user == "" {
		user = "system:serviceaccount:team-a:app"
	}
	verb, res := r.verb, r.resource
	if verb == "" {
		verb = "get"
	}
	if res == "" {
		res = "configmaps"
	}
	code := r.code
	if code == 0 {
		code = 200
	}
	received, logged := "2026-11-26T23:09:25.383216Z", "2026-11-26T23:09:25.386281Z"
	if !r.at.IsZero() {
		received, logged = r.at.Format(time.RFC3339Nano), r.at.Add(3*time.Millisecond).Format(time.RFC3339Nano)
	}
	stage, status := r.stage, fmt.Sprintf(`"responseStatus":{"metadata":{},"code":%d},`, code)
	switch stage {
	case "":
		stage = "ResponseComplete"
	case "RequestReceived":
		status = ""
	}
	return fmt.Sprintf(`{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":%q,"stage":%q,`+
		`"requestURI":"/api/v1/namespaces/%s/%s","verb":%q,"user":{"username":%q%s},"sourceIPs":[%q],`+
		`"objectRef":{"resource":%q,"namespace":%q,"subresource":%q,"apiVersion":"v1"},%s`+
		`"requestReceivedTimestamp":%q,"stageTimestamp":%q%s}`+"\n",
		r.id, stage, r.ns, res, verb, user, extra, r.ip, res, r.ns, r.sub, status, received, logged, ann)
}

func lines(rs ...req) string {
	s := ""
	for _, r := range rs {
		s += r.line()
	}
	return s
}

// queue records what a Tracker queues outside blocks.
type queue struct {
	mu      sync.Mutex
	items   []sender.Items
	changed chan struct{}
}

func newQueue() *queue { return &queue{changed: make(chan struct{})} }

func (q *queue) EnqueueItems(_ context.Context, it sender.Items, _ any) error {
	q.mu.Lock()
	q.items = append(q.items, it)
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
	return nil
}

// wait blocks until cond (called with the items so far) holds.
func (q *queue) wait(t *testing.T, what string, cond func([]sender.Items) bool) []sender.Items {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a failure bound
	defer cancel()
	for {
		q.mu.Lock()
		items, ch := append([]sender.Items(nil), q.items...), q.changed
		q.mu.Unlock()
		if cond(items) {
			return items
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s; queued %v", what, items)
		}
	}
}

// clock is a read clock the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logFile is a test audit log read block by block as the follower would.
type logFile struct {
	t    *testing.T
	path string
	f    *os.File
	off  int64
	ino  uint64
}

var inos = struct {
	sync.Mutex
	n uint64
}{}

func newLog(t *testing.T) *logFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	inos.Lock()
	inos.n++
	ino := inos.n
	inos.Unlock()
	return &logFile{t: t, path: path, f: f, ino: ino}
}

// block appends s to the file and returns it as the next block.
func (l *logFile) block(s string) follow.Block {
	l.t.Helper()
	w, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := w.WriteString(s); err != nil {
		l.t.Fatal(err)
	}
	w.Close()
	b := follow.Block{Pos: follow.Position{ID: follow.Identity{Dev: 1, Ino: l.ino, FP: []byte("fp"), FPLen: 2}, Name: l.path, Offset: l.off},
		Data: []byte(s), File: l.f}
	l.off += int64(len(s))
	return b
}

func tokenWatch(jti string) *tokenwatchv1.Watch {
	return &tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: jti,
		From:  timestamppb.New(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)),
		Until: timestamppb.New(time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC))}
}

func settings() *tokenwatchv1.LineageSettings {
	return &tokenwatchv1.LineageSettings{LookbackMs: uint32((2 * time.Minute).Milliseconds())}
}

// newTracker returns a Tracker on a test clock and queue, welcomed with
// lineage on and an empty watch set.
func newTracker(t *testing.T, capacity int) (*Tracker, *queue, *clock) {
	t.Helper()
	q := newQueue()
	c := &clock{t: time.Date(2026, 11, 26, 23, 10, 0, 0, time.UTC)}
	tr := New(Config{Capacity: capacity, Now: c.now, Queue: q})
	t.Cleanup(tr.Close)
	tr.Welcome(settings())
	tr.Watch(&tokenwatchv1.WatchUpdate{Reset_: true})
	return tr, q, c
}

// run runs tr.Run until the test ends.
func run(t *testing.T, tr *Tracker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

// queueAll acts as the pipeline once the items of every block read are
// queued (Queued).
func queueAll(tr *Tracker) {
	tr.mu.Lock()
	ticket := tr.ticket
	tr.mu.Unlock()
	tr.Queued(ticket)
}

func useIDs(it sender.Items) []string {
	var ids []string
	for _, u := range it.Uses {
		ids = append(ids, u.GetEvent().GetAuditId())
	}
	return ids
}
