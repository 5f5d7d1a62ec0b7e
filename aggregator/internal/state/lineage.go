package state

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/tokenwatch/tokenwatch/internal/lineage"
)

// bucketLineage holds token lineage's state (lineage.Entry): the SHA-256
// of the entry's key -> lineageValue. The bucket was added without a schema
// change: Open creates it in a file that lacks it, and an aggregator that
// does not know it leaves it alone (lineage entries free themselves by
// their own times, so entries left behind meanwhile do no harm).
var bucketLineage = []byte("lineage")

// lineageKey is the stored key of a lineage entry key: its digest, since
// an entry key holds user names of any length where bbolt keys stop at
// 32 KiB.
func lineageKey(k string) []byte {
	sum := sha256.Sum256([]byte(k))
	return sum[:]
}

// lineageValue is an entry as stored: the length of its key (uvarint), the
// key, then the value.
func lineageValue(e lineage.Entry) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(e.Key)+len(e.Value))
	b = binary.AppendUvarint(b, uint64(len(e.Key)))
	b = append(b, e.Key...)
	return append(b, e.Value...)
}

// decodeLineage reads an entry stored by lineageValue.
func decodeLineage(v []byte) (lineage.Entry, error) {
	n, w := binary.Uvarint(v)
	if w <= 0 || n > uint64(len(v)-w) {
		return lineage.Entry{}, errors.New("bad key length")
	}
	key := string(v[w : w+int(n)])
	val := append([]byte(nil), v[w+int(n):]...)
	return lineage.Entry{Key: key, Value: val}, nil
}

// putLineage writes a change's lineage entries and deletions.
func putLineage(tx *bolt.Tx, puts []encoded, dels []string) error {
	b := tx.Bucket(bucketLineage)
	for _, p := range puts {
		if err := b.Put(p.id, p.val); err != nil {
			return fmt.Errorf("put lineage entry: %w", err)
		}
	}
	for _, k := range dels {
		if err := b.Delete(lineageKey(k)); err != nil {
			return fmt.Errorf("delete lineage entry: %w", err)
		}
	}
	return nil
}

// encodeLineage encodes a change's lineage entries before the transaction.
func encodeLineage(puts []lineage.Entry) ([]encoded, error) {
	out := make([]encoded, len(puts))
	for i, e := range puts {
		if e.Key == "" {
			return nil, fmt.Errorf("commit: lineage entry %d has no key", i)
		}
		out[i] = encoded{id: lineageKey(e.Key), val: lineageValue(e)}
	}
	return out, nil
}

// BrokenEntry is a stored lineage entry that could not be read: its stored
// key (to delete it with Change.LineageBroken) and why.
type BrokenEntry struct {
	Key []byte
	Err error
}

// LineageEntries returns every stored lineage entry, in no particular
// order, and those that could not be read.
func (s *Store) LineageEntries() ([]lineage.Entry, []BrokenEntry, error) {
	var out []lineage.Entry
	var broken []BrokenEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLineage).ForEach(func(k, v []byte) error {
			e, err := decodeLineage(v)
			if err == nil && string(lineageKey(e.Key)) != string(k) {
				err = errors.New("key does not match its digest")
			}
			if err != nil {
				broken = append(broken, BrokenEntry{Key: append([]byte(nil), k...), Err: err})
				return nil
			}
			out = append(out, e)
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read lineage entries: %w", err)
	}
	return out, broken, nil
}

// DropLineage deletes stored lineage entries that could not be read.
func (s *Store) DropLineage(broken []BrokenEntry) error {
	if len(broken) == 0 {
		return nil
	}
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLineage)
		for _, e := range broken {
			if err := b.Delete(e.Key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop broken lineage entries from state %s: %w", s.path, err)
	}
	return nil
}
