package state

import (
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/tokenwatch/tokenwatch/internal/silence"
)

func mustBaselines(t testing.TB, s *Store) ([]silence.Baseline, int) {
	t.Helper()
	bs, unreadable, err := s.Baselines()
	if err != nil {
		t.Fatalf("Baselines: %v", err)
	}
	return bs, unreadable
}

// TestBaselines: audit policy baselines are put, replaced and deleted in
// the order of their change, survive a reopen, and a store file without
// their bucket (an older aggregator's) gains it.
func TestBaselines(t *testing.T) {
	a, b := silence.Policy{SHA256: "aaaa", Gaps: "rule 1 (level None) hides every token request"}, silence.Policy{Err: "open policy.yaml: permission denied"}
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, nil)
	mustCommit(t, s, Change{Baselines: []silence.Baseline{
		{Cluster: "prod", Node: "cp-1", Policy: a},
		{Cluster: "prod", Node: "cp-2", Policy: a},
		{Cluster: "prod", Node: "cp-2", Policy: b}, // later wins
		{Cluster: "dev", Node: "cp-1", Policy: a},
		{Cluster: "dev", Node: "cp-1"}, // deleted
	}})
	s.Close()
	s = open(t, path, nil)
	want := []silence.Baseline{{Cluster: "prod", Node: "cp-1", Policy: a}, {Cluster: "prod", Node: "cp-2", Policy: b}}
	got, unreadable := mustBaselines(t, s)
	if diff := cmp.Diff(want, got); diff != "" || unreadable != 0 {
		t.Errorf("after reopen (-want +got):\n%s%d unreadable", diff, unreadable)
	}
	if _, err := s.Commit(Change{Baselines: []silence.Baseline{{Cluster: "prod\x00x", Node: "n", Policy: a}}}); err == nil {
		t.Error("a cluster name with NUL was committed")
	}
	s.Close()

	// An older aggregator's file has no bucket; a broken entry is skipped.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketBaselines) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s = open(t, path, nil)
	if got, _ := mustBaselines(t, s); len(got) != 0 {
		t.Errorf("baselines = %v, want none", got)
	}
	mustCommit(t, s, Change{Baselines: []silence.Baseline{{Cluster: "prod", Node: "cp-1", Policy: a}}})
	s.Close()
	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBaselines)
		if err := bk.Put([]byte("prod\x00cp-3"), []byte("{not json")); err != nil {
			return err
		}
		return bk.Put([]byte("no-separator"), []byte(`{"sha256":"aaaa"}`))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s = open(t, path, nil)
	defer s.Close()
	got, unreadable = mustBaselines(t, s)
	if diff := cmp.Diff([]silence.Baseline{{Cluster: "prod", Node: "cp-1", Policy: a}}, got); diff != "" || unreadable != 2 {
		t.Errorf("with broken entries (-want +got):\n%s%d unreadable, want 2", diff, unreadable)
	}
}
