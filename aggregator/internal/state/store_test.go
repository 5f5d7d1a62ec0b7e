package state

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashEnv) != "" {
		crashChild(os.Getenv(crashEnv))
		return
	}
	goleak.VerifyTestMain(m)
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func open(t testing.TB, path string, clk *clock) *Store {
	t.Helper()
	opts := Options{}
	if clk != nil {
		opts.Now = clk.Now
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func rec(id string) alert.Record {
	return alert.Record{
		ID:        id,
		EventName: alert.EventTokenRequest,
		Time:      t0.Add(time.Microsecond * 123),
		Severity:  alert.Medium,
		Body:      "user minted a token for " + id,
		Attrs: []alert.Attr{
			alert.String("user.name", "mallory"),
			alert.Int("event.risk_score", 47),
			alert.Bool("tokenwatch.dry_run", false),
			alert.Strings("kubernetes.audit.sourceIPs", []string{"10.0.0.1", "192.0.2.7"}),
		},
	}
}

func ids(recs []alert.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func mustCommit(t testing.TB, s *Store, c Change) int {
	t.Helper()
	n, err := s.Commit(c)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return n
}

func mustOutbox(t testing.TB, s *Store) []alert.Record {
	t.Helper()
	r, err := s.Outbox(0)
	if err != nil {
		t.Fatalf("Outbox: %v", err)
	}
	return r
}

func mustStates(t testing.TB, s *Store, keys ...string) map[string]detect.State {
	t.Helper()
	m, err := s.States(keys)
	if err != nil {
		t.Fatalf("States: %v", err)
	}
	return m
}

func TestCommitSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	clk := &clock{t: t0}
	s := open(t, path, clk)
	want := []alert.Record{rec("a"), rec("b"), rec("c")}
	ev := []byte{0x0a, 0x03, 'i', 'd', '1'}
	n := mustCommit(t, s, Change{
		Records:   want,
		Done:      []string{"k-a", "k-b", "k-c"},
		DoneAlone: []string{"k-alone"},
		Pending:   []Pending{{Key: "k-p", Deadline: t0.Add(2 * time.Second), Cluster: "prod", Node: "cp-1", Event: ev}},
	})
	if n != 3 {
		t.Fatalf("Commit added %d, want 3", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path, clk)
	defer s.Close()
	if d := s.Depth(); d != 3 {
		t.Errorf("Depth() after reopen = %d, want 3", d)
	}
	if diff := cmp.Diff(want, mustOutbox(t, s)); diff != "" {
		t.Errorf("Outbox after reopen (-want +got):\n%s", diff)
	}
	got := mustStates(t, s, "k-a", "k-b", "k-c", "k-alone", "k-p", "k-unknown")
	wantStates := map[string]detect.State{"k-a": detect.StateDone, "k-b": detect.StateDone, "k-c": detect.StateDone, "k-alone": detect.StateDoneAlone, "k-p": detect.StatePending}
	if diff := cmp.Diff(wantStates, got); diff != "" {
		t.Errorf("States after reopen (-want +got):\n%s", diff)
	}
	due, err := s.DuePending(t0.Add(time.Second), 0)
	if err != nil || len(due) != 0 {
		t.Errorf("DuePending(before deadline) = %v, %v, want none", due, err)
	}
	due, err = s.DuePending(t0.Add(2*time.Second), 0)
	if err != nil {
		t.Fatal(err)
	}
	wantDue := []Pending{{Key: "k-p", Deadline: t0.Add(2 * time.Second), Cluster: "prod", Node: "cp-1", Event: ev}}
	if diff := cmp.Diff(wantDue, due, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("DuePending after reopen (-want +got):\n%s", diff)
	}
}

func TestDuplicateRecordsAreOutboxedOnce(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), FileName), clk)
	defer s.Close()

	steps := []struct {
		name      string
		do        func() (int, error)
		wantAdded int
		wantIDs   []string
	}{
		{"first insert", func() (int, error) { return s.Commit(Change{Records: []alert.Record{rec("a"), rec("b")}}) }, 2, []string{"a", "b"}},
		{"same ID twice in one change", func() (int, error) { return s.Commit(Change{Records: []alert.Record{rec("c"), rec("c")}}) }, 1, []string{"a", "b", "c"}},
		{"ID already outboxed", func() (int, error) { return s.Commit(Change{Records: []alert.Record{rec("a"), rec("d")}}) }, 1, []string{"a", "b", "c", "d"}},
		{"export a and c", func() (int, error) { return 0, s.Exported([]string{"a", "c", "unknown"}) }, 0, []string{"b", "d"}},
		{"ID already exported", func() (int, error) { return s.Commit(Change{Records: []alert.Record{rec("a"), rec("c")}}) }, 0, []string{"b", "d"}},
		{"exported twice", func() (int, error) { return 0, s.Exported([]string{"a"}) }, 0, []string{"b", "d"}},
	}
	for _, st := range steps {
		n, err := st.do()
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if n != st.wantAdded {
			t.Errorf("%s: added %d, want %d", st.name, n, st.wantAdded)
		}
		if diff := cmp.Diff(st.wantIDs, ids(mustOutbox(t, s))); diff != "" {
			t.Errorf("%s: outbox IDs (-want +got):\n%s", st.name, diff)
		}
		if d := s.Depth(); d != len(st.wantIDs) {
			t.Errorf("%s: Depth() = %d, want %d", st.name, d, len(st.wantIDs))
		}
	}
}

func TestOutboxOrderAndLimit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	var want []string
	for i := range 30 {
		id := fmt.Sprintf("r%02d", 29-i) // IDs sort opposite to insertion order
		want = append(want, id)
		mustCommit(t, s, Change{Records: []alert.Record{rec(id)}})
	}
	got, err := s.Outbox(10)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[:10], ids(got)); diff != "" {
		t.Errorf("Outbox(10) (-want +got):\n%s", diff)
	}
	if err := s.Exported(want[:10]); err != nil {
		t.Fatal(err)
	}
	got, err = s.Outbox(0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[10:], ids(got)); diff != "" {
		t.Errorf("Outbox(0) after export (-want +got):\n%s", diff)
	}
}

func TestDedupeStates(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), FileName), clk)
	defer s.Close()
	p := func(k string, d time.Duration) Pending {
		return Pending{Key: k, Deadline: t0.Add(d), Cluster: "c", Node: "n", Unless: detect.Settled()}
	}

	steps := []struct {
		name    string
		change  Change
		want    map[string]detect.State
		wantDue []string
	}{
		{"hold two", Change{Pending: []Pending{p("k1", time.Second), p("k2", 2*time.Second)}},
			map[string]detect.State{"k1": detect.StatePending, "k2": detect.StatePending}, []string{"k1", "k2"}},
		{"completion of k1", Change{Records: []alert.Record{rec("r1")}, Done: []string{"k1"}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending}, []string{"k2"}},
		{"k1 held again is ignored", Change{Pending: []Pending{p("k1", time.Second)}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending}, []string{"k2"}},
		{"k2 held again moves its deadline", Change{Pending: []Pending{p("k2", 5*time.Second)}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending}, nil},
		{"k3 done without pending", Change{Done: []string{"k3"}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending, "k3": detect.StateDone}, nil},
		{"k4 held", Change{Pending: []Pending{p("k4", time.Second)}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending, "k3": detect.StateDone, "k4": detect.StatePending}, []string{"k4"}},
		{"k4 alerted alone", Change{DoneAlone: []string{"k4"}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending, "k3": detect.StateDone, "k4": detect.StateDoneAlone}, nil},
		{"k4 held again is ignored", Change{Pending: []Pending{p("k4", time.Second)}},
			map[string]detect.State{"k1": detect.StateDone, "k2": detect.StatePending, "k3": detect.StateDone, "k4": detect.StateDoneAlone}, nil},
	}
	for _, st := range steps {
		mustCommit(t, s, st.change)
		if diff := cmp.Diff(st.want, mustStates(t, s, "k1", "k2", "k3", "k4")); diff != "" {
			t.Errorf("%s: States (-want +got):\n%s", st.name, diff)
		}
		due, err := s.DuePending(t0.Add(2*time.Second), 0)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, d := range due {
			keys = append(keys, d.Key)
		}
		if diff := cmp.Diff(st.wantDue, keys); diff != "" {
			t.Errorf("%s: DuePending keys (-want +got):\n%s", st.name, diff)
		}
	}
	next, ok, err := s.NextDeadline()
	if err != nil || !ok || !next.Equal(t0.Add(5*time.Second)) {
		t.Errorf("NextDeadline() = %v, %v, %v, want %v", next, ok, err, t0.Add(5*time.Second))
	}
	// max limits the answer, earliest first.
	mustCommit(t, s, Change{Pending: []Pending{p("k5", 4*time.Second), p("k6", 3*time.Second)}})
	due, err := s.DuePending(t0.Add(time.Hour), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 2 || due[0].Key != "k6" || due[1].Key != "k5" {
		t.Errorf("DuePending(max 2) = %v, want k6, k5", due)
	}
}

func TestPrune(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, clk)
	defer func() { s.Close() }()
	const retention = 24 * time.Hour

	mustCommit(t, s, Change{Records: []alert.Record{rec("old")}, Done: []string{"k-old"}})
	if err := s.Exported([]string{"old"}); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, Change{Pending: []Pending{{Key: "k-held", Deadline: t0.Add(time.Second)}}})
	mustCommit(t, s, Change{Records: []alert.Record{rec("unexported")}, Done: []string{"k-unexported"}})
	clk.Set(t0.Add(12 * time.Hour))
	mustCommit(t, s, Change{Records: []alert.Record{rec("new")}, Done: []string{"k-new"}})
	if err := s.Exported([]string{"new"}); err != nil {
		t.Fatal(err)
	}

	// Within retention nothing goes.
	n, err := s.Prune(t0.Add(retention-time.Nanosecond), retention)
	if err != nil || n != 0 {
		t.Fatalf("Prune(within retention) = %d, %v, want 0", n, err)
	}
	// Just after: the old dedupe marks and the exported ID go; the pending
	// key's mark and the unexported record stay.
	n, err = s.Prune(t0.Add(retention+time.Nanosecond), retention)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 { // k-old, k-unexported, exported ID "old"
		t.Errorf("Prune = %d, want 3", n)
	}
	want := map[string]detect.State{"k-held": detect.StatePending, "k-new": detect.StateDone}
	if diff := cmp.Diff(want, mustStates(t, s, "k-old", "k-held", "k-unexported", "k-new")); diff != "" {
		t.Errorf("States after prune (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"unexported"}, ids(mustOutbox(t, s))); diff != "" {
		t.Errorf("outbox after prune (-want +got):\n%s", diff)
	}
	// A pruned exported ID can be outboxed again (it is beyond retention);
	// one within retention cannot.
	if n := mustCommit(t, s, Change{Records: []alert.Record{rec("old"), rec("new"), rec("unexported")}}); n != 1 {
		t.Errorf("Commit after prune added %d, want 1 (only the pruned ID)", n)
	}
	// Prune survives a reopen, and pruning many entries works in chunks.
	s.Close()
	s = open(t, path, clk)
	var keys []string
	for i := range pruneChunk + 10 {
		keys = append(keys, fmt.Sprintf("bulk-%d", i))
	}
	mustCommit(t, s, Change{Done: keys})
	n, err = s.Prune(clk.Now().Add(retention+time.Second), retention)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(keys)+2 { // + k-new and the exported ID "new"
		t.Errorf("bulk Prune = %d, want %d", n, len(keys)+2)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, nil)
	defer s.Close()
	_, err := Open(path, Options{LockTimeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open = %v, want a locked error", err)
	}
}

// TestSchemaVersions: a version 1 file (before DoneAlone) opens, keeps its
// data and is upgraded; a version this code does not know is refused with
// an error that names it.
func TestSchemaVersions(t *testing.T) {
	setSchema := func(t *testing.T, path, v string) {
		t.Helper()
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	schema := func(t *testing.T, s *Store) string {
		t.Helper()
		var v string
		if err := s.db.View(func(tx *bolt.Tx) error { v = string(tx.Bucket(bucketMeta).Get(keySchema)); return nil }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	t.Run("version 1 is upgraded", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), FileName)
		s := open(t, path, nil)
		mustCommit(t, s, Change{Records: []alert.Record{rec("r")}})
		s.Close()
		setSchema(t, path, "1")
		// Version 1 to 3 keyed a request by its key itself.
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		mark := append([]byte{byte(detect.StateDone)}, u64(timeBits(t0))...)
		err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDedupe).Put([]byte("k"), mark) })
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		s = open(t, path, nil)
		defer s.Close()
		if v := schema(t, s); v != schemaVersion {
			t.Errorf("schema after Open = %q, want %q", v, schemaVersion)
		}
		if got := mustStates(t, s, "k"); got["k"] != detect.StateDone {
			t.Errorf("States(k) = %v, want done", got["k"])
		}
		if n := len(mustOutbox(t, s)); n != 1 {
			t.Errorf("outbox = %d records, want 1", n)
		}
	})
	t.Run("version 2 is upgraded, its exported IDs kept and pruned", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), FileName)
		clk := &clock{t: t0}
		s := open(t, path, clk)
		mustCommit(t, s, Change{Records: []alert.Record{rec("old"), rec("waiting")}})
		if err := s.Exported([]string{"old"}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		// Rewrite the file as version 2 left it: the exported record's ID
		// entry rewritten as idExported with the export time.
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			ids := tx.Bucket(bucketIDs)
			v := ids.Get([]byte("old"))
			if err := ids.Put([]byte("old"), idValue(idExported, binary.BigEndian.Uint64(v[1:9]), t0)); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(keySchema, []byte("2"))
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}

		s = open(t, path, clk)
		defer s.Close()
		if v := schema(t, s); v != schemaVersion {
			t.Errorf("schema after Open = %q, want %q", v, schemaVersion)
		}
		if n := mustCommit(t, s, Change{Records: []alert.Record{rec("old"), rec("waiting")}}); n != 0 {
			t.Errorf("Commit of known IDs added %d, want 0", n)
		}
		if err := s.Exported([]string{"old", "waiting", "waiting"}); err != nil {
			t.Fatal(err)
		}
		if n := len(mustOutbox(t, s)); n != 0 || s.Depth() != 0 {
			t.Errorf("outbox = %d records, depth %d, want empty", n, s.Depth())
		}
		n, err := s.Prune(t0.Add(25*time.Hour), 24*time.Hour)
		if err != nil || n != 2 {
			t.Errorf("Prune = %d, %v, want both exported IDs", n, err)
		}
		if n := mustCommit(t, s, Change{Records: []alert.Record{rec("old"), rec("waiting")}}); n != 2 {
			t.Errorf("Commit after prune added %d, want 2", n)
		}
	})
	t.Run("unknown version is refused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), FileName)
		open(t, path, nil).Close()
		setSchema(t, path, "6")
		s, err := Open(path, Options{})
		if err == nil {
			s.Close()
			t.Fatal("Open(schema 6) succeeded")
		}
		if !strings.Contains(err.Error(), `unsupported schema version "6"`) || !strings.Contains(err.Error(), path) {
			t.Errorf("Open(schema 6) = %v, want an error naming the version and the file", err)
		}
	})
}

func TestOpenDirCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s, err := OpenDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, want 0600", fi.Mode().Perm())
	}
}

func TestCommitRejectsRecordWithoutID(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	if _, err := s.Commit(Change{Records: []alert.Record{{EventName: "x"}}}); err == nil {
		t.Fatal("Commit(record without ID) = nil error")
	}
	if d := s.Depth(); d != 0 {
		t.Errorf("Depth() = %d, want 0", d)
	}
}

func TestAddedNotifies(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	mustCommit(t, s, Change{Done: []string{"k"}})
	select {
	case <-s.Added():
		t.Fatal("Added fired for a change without records")
	default:
	}
	mustCommit(t, s, Change{Records: []alert.Record{rec("a")}})
	mustCommit(t, s, Change{Records: []alert.Record{rec("b")}})
	select {
	case <-s.Added():
	default:
		t.Fatal("Added did not fire after a commit with records")
	}
	select {
	case <-s.Added():
		t.Fatal("Added fired twice: it should coalesce")
	default:
	}
}

// TestConcurrentCommits runs many writers at once (group commit) and checks
// that every record is there exactly once and every writer got its count.
func TestConcurrentCommits(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	const writers, perWriter = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				id := fmt.Sprintf("w%d-%d", w, i)
				// Every writer also re-sends the record of writer 0 (a duplicate).
				n, err := s.Commit(Change{Records: []alert.Record{rec(id), rec(fmt.Sprintf("w0-%d", i))}, Done: []string{"k-" + id}})
				if err != nil {
					errs <- err
					return
				}
				if n > 2 || (w != 0 && n < 1) {
					errs <- fmt.Errorf("writer %d commit %d added %d", w, i, n)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := mustOutbox(t, s)
	seen := map[string]int{}
	for _, r := range got {
		seen[r.ID]++
	}
	if len(got) != writers*perWriter || len(seen) != writers*perWriter {
		t.Errorf("outbox holds %d records (%d distinct), want %d", len(got), len(seen), writers*perWriter)
	}
	if d := s.Depth(); d != writers*perWriter {
		t.Errorf("Depth() = %d, want %d", d, writers*perWriter)
	}
}

// Crash safety: a child process commits and reports each acknowledged
// commit on stdout, then is killed with SIGKILL mid-stream. Everything it
// reported must be in the store when reopened.
const crashEnv = "TOKENWATCH_STATE_CRASH_CHILD"

func crashChild(path string) {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		if _, err := s.Commit(Change{Records: []alert.Record{rec(fmt.Sprintf("c%06d", i))}, Done: []string{fmt.Sprintf("k%06d", i)}}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintln(w, i) // acknowledged
		w.Flush()
	}
}

func TestCrashKeepsAcknowledgedCommits(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	last := -1
	for sc.Scan() {
		n, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("child said %q", sc.Text())
		}
		last = n
		if last == 50 {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	// Drain what the child said before dying: those were acknowledged too.
	for sc.Scan() {
		if n, err := strconv.Atoi(sc.Text()); err == nil {
			last = n
		}
	}
	cmd.Wait()
	if last < 50 {
		t.Fatalf("child acknowledged only %d commits before exiting", last+1)
	}

	s := open(t, path, nil)
	defer s.Close()
	got := mustOutbox(t, s)
	if len(got) < last+1 {
		t.Fatalf("after SIGKILL the outbox holds %d records, want at least the %d acknowledged", len(got), last+1)
	}
	for i := 0; i <= last; i++ {
		if got[i].ID != fmt.Sprintf("c%06d", i) {
			t.Fatalf("record %d is %s, want c%06d", i, got[i].ID, i)
		}
	}
	keys := []string{}
	for i := 0; i <= last; i++ {
		keys = append(keys, fmt.Sprintf("k%06d", i))
	}
	for k, st := range mustStates(t, s, keys...) {
		if st != detect.StateDone {
			t.Errorf("after SIGKILL %s is %v, want done", k, st)
		}
	}
	if len(mustStates(t, s, keys...)) != len(keys) {
		t.Errorf("after SIGKILL some acknowledged dedupe marks are missing")
	}
}

func TestRunPruneStopsWithContext(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunPrune(ctx, time.Millisecond, func() time.Duration { return time.Hour }, nil)
	}()
	cancel()
	<-done
}

// TestSubmitCommitsInOrder: changes submitted one after the other commit in
// that order, whatever order their owners wait in.
func TestSubmitCommitsInOrder(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	w1 := s.Submit(Change{Records: []alert.Record{rec("first")}, Done: []string{"k"}})
	w2 := s.Submit(Change{Records: []alert.Record{rec("second")}, Pending: []Pending{{Key: "k", Deadline: t0, Unless: detect.Settled()}}})
	w3 := s.Submit(Change{Records: []alert.Record{rec("first")}})
	for i, w := range []func() (int, error){w3, w2, w1, w1} {
		n, err := w()
		want := []int{0, 1, 1, 1}[i]
		if err != nil || n != want {
			t.Errorf("wait %d = %d, %v, want %d", i, n, err, want)
		}
	}
	if diff := cmp.Diff([]string{"first", "second"}, ids(mustOutbox(t, s))); diff != "" {
		t.Errorf("outbox (-want +got):\n%s", diff)
	}
	if st := mustStates(t, s, "k")["k"]; st != detect.StateDone {
		t.Errorf("k is %v, want done (Done committed before the later Pending)", st)
	}
	if _, err := s.Submit(Change{Records: []alert.Record{{}}})(); err == nil {
		t.Error("Submit(record without ID) waited to nil error")
	}
}

// TestSubmitUnderCallerLock is the pattern for the ingest path: decide and
// Submit under the caller's lock, wait outside it.
func TestSubmitUnderCallerLock(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				id := fmt.Sprintf("w%d-%d", w, i)
				mu.Lock()
				wait := s.Submit(Change{Records: []alert.Record{rec(id)}})
				order = append(order, id)
				mu.Unlock()
				if n, err := wait(); err != nil || n != 1 {
					t.Errorf("wait(%s) = %d, %v", id, n, err)
				}
			}
		}()
	}
	wg.Wait()
	if diff := cmp.Diff(order, ids(mustOutbox(t, s))); diff != "" {
		t.Errorf("outbox is not in Submit order (-want +got):\n%s", diff)
	}
}

// TestOutboxRecallsCommittedRecords: records committed by this process are
// handed out as committed, not decoded again, identical to their stored
// form; exported ones are forgotten; the kept set is bounded and a record
// beyond the bound, or after a restart, is decoded from the file.
func TestOutboxRecallsCommittedRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, &clock{t: t0})
	odd := rec("odd")
	odd.Time = time.Now().In(time.FixedZone("X", 3600)) // monotonic reading, zone
	odd.Attrs = append(odd.Attrs, alert.Strings("empty", []string{}), alert.Attr{Key: "other", Value: alert.Value{Kind: "future", Str: "x"}})
	n := recentMax + 3
	recs := []alert.Record{odd}
	for i := 1; i < n; i++ {
		recs = append(recs, rec("r"+strconv.Itoa(i)))
	}
	// Twice the same change: its records are already outboxed the second time.
	mustCommit(t, s, Change{Records: recs[:10]})
	mustCommit(t, s, Change{Records: recs[:10]})
	mustCommit(t, s, Change{Records: recs[10:]})
	if len(s.recent) != recentMax {
		t.Fatalf("kept %d records, want the bound %d", len(s.recent), recentMax)
	}
	if s.recent[1] != &recs[0] {
		t.Fatal("the first record is not handed out as committed")
	}
	stored := func(recs []alert.Record) string {
		b, err := json.Marshal(recs)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	live := mustOutbox(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, &clock{t: t0})
	defer s.Close()
	decoded := mustOutbox(t, s)
	if len(live) != n || stored(live) != stored(decoded) {
		t.Fatalf("outbox from memory differs from the decoded one (%d and %d records)", len(live), len(decoded))
	}
	if len(s.recent) != 0 {
		t.Fatalf("kept %d records after a restart, want 0", len(s.recent))
	}

	mustCommit(t, s, Change{Records: []alert.Record{rec("new")}})
	if len(s.recent) != 1 {
		t.Fatalf("kept %d records, want 1", len(s.recent))
	}
	if err := s.Exported([]string{"new", "odd"}); err != nil {
		t.Fatal(err)
	}
	if len(s.recent) != 0 {
		t.Errorf("kept %d records after their export, want 0", len(s.recent))
	}
	if got := mustOutbox(t, s); len(got) != n-1 || got[0].ID != "r1" {
		t.Errorf("outbox after export holds %d records from %q, want %d from r1", len(got), got[0].ID, n-1)
	}
}
