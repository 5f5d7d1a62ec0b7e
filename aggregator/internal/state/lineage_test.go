package state

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
)

func entry(key, value string) lineage.Entry {
	return lineage.Entry{Key: key, Value: json.RawMessage(value)}
}

func mustLineage(t testing.TB, s *Store) []lineage.Entry {
	t.Helper()
	got, broken, err := s.LineageEntries()
	if err != nil {
		t.Fatalf("LineageEntries: %v", err)
	}
	if len(broken) > 0 {
		t.Fatalf("LineageEntries: broken entries %v", broken)
	}
	slices.SortFunc(got, func(a, b lineage.Entry) int { return strings.Compare(a.Key, b.Key) })
	return got
}

// TestLineageEntries: lineage entries are put, replaced and deleted in the
// transaction of their change, survive a reopen, and a key of any length
// is stored.
func TestLineageEntries(t *testing.T) {
	long := "actor/actor_user/" + strings.Repeat("u", 40<<10) // beyond bbolt's 32 KiB keys
	steps := []struct {
		name string
		ch   Change
		want []lineage.Entry
	}{
		{"put with a record", Change{
			Records:    []alert.Record{rec("r1")},
			LineagePut: []lineage.Entry{entry("token/a", `{"n":1}`), entry("full", `{}`), entry(long, `{"long":true}`)},
		}, []lineage.Entry{entry(long, `{"long":true}`), entry("full", `{}`), entry("token/a", `{"n":1}`)}},
		{"replace and delete", Change{
			LineagePut:    []lineage.Entry{entry("token/a", `{"n":2}`)},
			LineageDelete: []string{"full", long},
		}, []lineage.Entry{entry("token/a", `{"n":2}`)}},
		{"delete of an absent key", Change{LineageDelete: []string{"token/none"}},
			[]lineage.Entry{entry("token/a", `{"n":2}`)}},
	}
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, nil)
	defer func() { s.Close() }()
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.ch.Empty() {
				t.Fatal("Change.Empty() = true for a lineage change")
			}
			mustCommit(t, s, st.ch)
			if diff := cmp.Diff(st.want, mustLineage(t, s)); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
			s.Close()
			s = open(t, path, nil)
			if diff := cmp.Diff(st.want, mustLineage(t, s)); diff != "" {
				t.Errorf("entries after reopen (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLineageFailedCommitWritesNothing: a change that fails writes none of
// its lineage entries.
func TestLineageFailedCommitWritesNothing(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), nil)
	defer s.Close()
	_, err := s.Commit(Change{
		Records:    []alert.Record{{EventName: alert.EventTokenRequest}}, // no ID: refused
		LineagePut: []lineage.Entry{entry("token/a", `{}`)},
	})
	if err == nil {
		t.Fatal("Commit of a record without ID succeeded")
	}
	if _, err := s.Commit(Change{LineagePut: []lineage.Entry{{Value: json.RawMessage(`{}`)}}}); err == nil {
		t.Fatal("Commit of a lineage entry without key succeeded")
	}
	if got := mustLineage(t, s); len(got) != 0 {
		t.Errorf("entries = %v, want none", got)
	}
}

// TestLineageBucketAdded: a file written before the lineage bucket existed
// opens (its data kept), gets the bucket, and takes lineage entries.
func TestLineageBucketAdded(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, nil)
	mustCommit(t, s, Change{Records: []alert.Record{rec("r")}, Done: []string{"k"}})
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketLineage) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s = open(t, path, nil)
	defer s.Close()
	if got := mustLineage(t, s); len(got) != 0 {
		t.Errorf("entries = %v, want none", got)
	}
	if n := len(mustOutbox(t, s)); n != 1 {
		t.Errorf("outbox = %d records, want 1", n)
	}
	mustCommit(t, s, Change{LineagePut: []lineage.Entry{entry("token/a", `{}`)}})
	if got := mustLineage(t, s); len(got) != 1 {
		t.Errorf("entries = %v, want token/a", got)
	}
}

// TestLineageBroken: entries that cannot be read are reported apart and
// can be dropped; the others are still read.
func TestLineageBroken(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, nil)
	mustCommit(t, s, Change{LineagePut: []lineage.Entry{entry("token/a", `{}`)}})
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLineage)
		if err := b.Put([]byte("short"), []byte{0xff}); err != nil { // truncated length
			return err
		}
		return b.Put([]byte("misfiled"), lineageValue(entry("token/b", `{}`)))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s = open(t, path, nil)
	defer s.Close()
	got, broken, err := s.LineageEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key != "token/a" || len(broken) != 2 {
		t.Fatalf("LineageEntries = %v, broken %v; want token/a and two broken", got, broken)
	}
	if err := s.DropLineage(broken); err != nil {
		t.Fatal(err)
	}
	if _, broken, err = s.LineageEntries(); err != nil || len(broken) != 0 {
		t.Errorf("after DropLineage: broken %v, %v; want none", broken, err)
	}
}

// TestLineageManyEntriesVerify: a file whose lineage bucket spans many
// pages passes the corrupt-file check.
func TestLineageManyEntriesVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, nil)
	for b := range 10 {
		var ch Change
		for i := range 200 {
			ch.LineagePut = append(ch.LineagePut, entry(fmt.Sprintf("token/%d-%d", b, i), fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 300))))
		}
		mustCommit(t, s, ch)
	}
	s.Close()
	if err := verify(path, 0); err != nil {
		t.Fatalf("verify: %v", err)
	}
	s = open(t, path, nil)
	defer s.Close()
	if n := len(mustLineage(t, s)); n != 2000 {
		t.Errorf("entries = %d, want 2000", n)
	}
}

// FuzzDecodeLineage: any stored value decodes or fails without a panic,
// and an encoded entry decodes to itself.
func FuzzDecodeLineage(f *testing.F) {
	f.Add([]byte{}, "token/a", []byte(`{"n":1}`))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "", []byte{})
	f.Add(lineageValue(entry("full", `{}`)), "actor/actor_user/alice", []byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte, key string, value []byte) {
		_, _ = decodeLineage(raw)
		e := lineage.Entry{Key: key, Value: value}
		got, err := decodeLineage(lineageValue(e))
		if err != nil || got.Key != key || string(got.Value) != string(value) {
			t.Errorf("decodeLineage(lineageValue(%q, %q)) = %q, %q, %v", key, value, got.Key, got.Value, err)
		}
	})
}
