package state

import (
	"encoding/binary"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// requestKeyOf is a request key as the pipeline writes it (detect.Key.String)
// for an auditID of n characters.
func requestKeyOf(n int) string {
	return strconv.Quote("prod") + "/" + strconv.Quote(strings.Repeat("a", n)) + "/" + strconv.Quote("2026-05-01T12:00:00.000000Z")
}

// TestClientControlledKeysAreBounded: a request key is built from the
// auditID a client sends (kube-apiserver logs a 40,004-character Audit-ID
// header as is), and bbolt refuses keys over 32 KiB. Whatever its length,
// a key's pending entry, its dedupe mark, its due entry and its prune work,
// and a long record ID commits too.
func TestClientControlledKeysAreBounded(t *testing.T) {
	tests := []struct {
		name string
		key  string
	}{
		{"short", requestKeyOf(36)},
		{"just under bbolt's limit", requestKeyOf(32700)},
		{"40,004-character auditID", requestKeyOf(40004)},
		{"1 MiB auditID", requestKeyOf(1 << 20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: t0}
			path := filepath.Join(t.TempDir(), FileName)
			s := open(t, path, clk)
			defer func() { s.Close() }()
			p := Pending{Key: tt.key, Deadline: t0.Add(2 * time.Second), Cluster: "prod", Node: "cp-1", Event: []byte{1}}
			mustCommit(t, s, Change{Pending: []Pending{p}})
			if got := mustStates(t, s, tt.key); got[tt.key] != detect.StatePending {
				t.Errorf("States after hold = %v, want pending", got[tt.key])
			}
			s.Close()
			s = open(t, path, clk)
			due, err := s.DuePending(t0.Add(2*time.Second), 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(due) != 1 || due[0].Key != tt.key {
				t.Fatalf("DuePending = %d entries, want the held key back whole", len(due))
			}
			longID := "tr-" + tt.key
			if n := mustCommit(t, s, Change{Records: []alert.Record{rec(longID)}, Done: []string{tt.key}}); n != 1 {
				t.Errorf("Commit added %d, want 1", n)
			}
			if n := mustCommit(t, s, Change{Records: []alert.Record{rec(longID)}}); n != 0 {
				t.Errorf("Commit of the same long ID again added %d, want 0", n)
			}
			if got := mustStates(t, s, tt.key, tt.key+"x"); !cmp.Equal(got, map[string]detect.State{tt.key: detect.StateDone}) {
				t.Errorf("States after done = %v, want only the key done", got)
			}
			if due, _ := s.DuePending(t0.Add(time.Hour), 0); len(due) != 0 {
				t.Errorf("DuePending after done = %d entries, want none", len(due))
			}
			if err := s.Exported([]string{longID}); err != nil {
				t.Fatal(err)
			}
			if n, err := s.Prune(t0.Add(48*time.Hour), 24*time.Hour); err != nil || n != 2 {
				t.Errorf("Prune = %d, %v, want the mark and the exported ID", n, err)
			}
		})
	}
}

// TestCommitBoundsRecords: a record's client-controlled strings are bounded
// before they are stored, and the record says which were cut.
func TestCommitBoundsRecords(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	r := rec("big")
	r.Attrs = append(r.Attrs,
		alert.String("kubernetes.audit.auditID", strings.Repeat("x", 40004)),
		alert.Strings("kubernetes.audit.requestObject.spec.audiences", []string{strings.Repeat("y", 3145500)}))
	mustCommit(t, s, Change{Records: []alert.Record{r}})
	s.forget([]uint64{1}) // read what the file holds
	got := mustOutbox(t, s)
	if len(got) != 1 {
		t.Fatalf("outbox = %d records, want 1", len(got))
	}
	if v, _ := got[0].Attr("user.name"); v.Str != "mallory" {
		t.Errorf("user.name = %q, want the actor kept", v.Str)
	}
	tr, ok := got[0].Attr(alert.AttrTruncated)
	want := []string{"kubernetes.audit.auditID", "kubernetes.audit.requestObject.spec.audiences"}
	if !ok || !cmp.Equal(tr.Strings, want) {
		t.Errorf("%s = %v, want %v", alert.AttrTruncated, tr.Strings, want)
	}
	if v, _ := got[0].Attr("kubernetes.audit.auditID"); len(v.Str) > alert.MaxValueBytes || !strings.HasPrefix(v.Str, "xxxx") ||
		!strings.Contains(v.Str, "...[truncated 40004 bytes sha256:") {
		t.Errorf("auditID kept %d bytes, want a prefix of at most %d", len(v.Str), alert.MaxValueBytes)
	}
}

// TestSchema3IsUpgraded: a version 3 file stored request keys as they are;
// Open rewrites them so that they are found under the bounded keys.
func TestSchema3IsUpgraded(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	ev := []byte{0x0a, 0x01, 'z'}
	mark := func(st detect.State) []byte {
		v := make([]byte, 9)
		v[0] = byte(st)
		copy(v[1:], u64(timeBits(t0)))
		return v
	}
	writeFile(t, path, func(put func(bucket, k, v []byte)) {
		put(bucketMeta, keySchema, []byte("3"))
		put(bucketDedupe, []byte("k-done"), mark(detect.StateDone))
		put(bucketDedupeAt, timeKey(t0, []byte("k-done")), nil)
		put(bucketDedupe, []byte("k-held"), mark(detect.StatePending))
		put(bucketDedupeAt, timeKey(t0, []byte("k-held")), nil)
		old := encodePendingV3(&Pending{Deadline: t0.Add(time.Second), Cluster: "prod", Node: "cp-1", Event: ev})
		put(bucketPending, []byte("k-held"), old)
		put(bucketPendingDue, timeKey(t0.Add(time.Second), []byte("k-held")), nil)
	})
	clk := &clock{t: t0}
	s := open(t, path, clk)
	defer s.Close()
	want := map[string]detect.State{"k-done": detect.StateDone, "k-held": detect.StatePending}
	if diff := cmp.Diff(want, mustStates(t, s, "k-done", "k-held", "k-none")); diff != "" {
		t.Errorf("States after upgrade (-want +got):\n%s", diff)
	}
	due, err := s.DuePending(t0.Add(time.Second), 0)
	if err != nil {
		t.Fatal(err)
	}
	wantDue := []Pending{{Key: "k-held", Deadline: t0.Add(time.Second), Cluster: "prod", Node: "cp-1", Event: ev}}
	if diff := cmp.Diff(wantDue, due, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("DuePending after upgrade (-want +got):\n%s", diff)
	}
	mustCommit(t, s, Change{Done: []string{"k-held"}})
	if due, _ := s.DuePending(t0.Add(time.Hour), 0); len(due) != 0 {
		t.Errorf("DuePending after done = %d entries, want none", len(due))
	}
	if n, err := s.Prune(t0.Add(48*time.Hour), 24*time.Hour); err != nil || n != 2 {
		t.Errorf("Prune after upgrade = %d, %v, want both marks", n, err)
	}
}

// encodePendingV3 is the pending value of schema 3 and earlier: deadline,
// cluster, node, event; the key was the entry's key.
func encodePendingV3(p *Pending) []byte {
	b := u64(timeBits(p.Deadline))
	b = binary.AppendUvarint(b, uint64(len(p.Cluster)))
	b = append(b, p.Cluster...)
	b = binary.AppendUvarint(b, uint64(len(p.Node)))
	b = append(b, p.Node...)
	return append(b, p.Event...)
}

// TestSchema4IsUpgraded: a version 4 file's pending entries had no verdict;
// Open rewrites them, and they come back unjudged (Verdict.Rule 0), while
// entries committed since keep theirs.
func TestSchema4IsUpgraded(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	ev := []byte{0x0a, 0x01, 'z'}
	old := Pending{Key: "k-held", Deadline: t0.Add(time.Second), Cluster: "prod", Node: "cp-1", Event: ev}
	writeFile(t, path, func(put func(bucket, k, v []byte)) {
		id := requestKey(old.Key)
		put(bucketMeta, keySchema, []byte("4"))
		put(bucketPending, id, encodePendingV4(&old))
		put(bucketPendingDue, timeKey(old.Deadline, id), nil)
	})
	s := open(t, path, &clock{t: t0})
	defer s.Close()
	judged := Pending{Key: "k-judged", Deadline: t0.Add(2 * time.Second), Cluster: "prod", Node: "cp-2", Event: ev,
		Verdict: rule.Verdict{Match: true, Excluded: true, ByDefault: true, By: "system:node:*", Mismatch: "m", Rule: 42}}
	mustCommit(t, s, Change{Pending: []Pending{judged}})
	due, err := s.DuePending(t0.Add(time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	judged.Unless = nil
	want := []Pending{old, judged}
	if diff := cmp.Diff(want, due, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("DuePending after upgrade (-want +got):\n%s", diff)
	}
}

// encodePendingV4 is the pending value of schema 4: deadline, key,
// cluster, node, event.
func encodePendingV4(p *Pending) []byte {
	b := u64(timeBits(p.Deadline))
	for _, s := range []string{p.Key, p.Cluster, p.Node} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, p.Event...)
}

// writeFile writes a state file as an older aggregator left it: every
// bucket, and the entries fill puts.
func writeFile(t *testing.T, path string, fill func(put func(bucket, k, v []byte))) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		var err error
		fill(func(b []byte, k, v []byte) {
			if err == nil {
				err = tx.Bucket(b).Put(k, v)
			}
		})
		return err
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}
