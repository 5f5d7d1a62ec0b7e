package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/detect"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/silence"
)

// FileName is the name of the store's file inside the state directory.
const FileName = "aggregator.db"

// schemaVersion is the layout of the buckets below. Version 1 had no
// StateDoneAlone marks; version 2 marked an exported record's ID by
// rewriting its ids entry (idExported and the export time), a write to a
// random page per record that version 3 no longer makes: an ID whose seq is
// gone from the outbox is exported. Version 4 keys requests by a digest of
// the request key (see requestKey) instead of the key itself, which holds
// the client's Audit-ID, and keeps the key in the pending entry. Version 5
// keeps with a held event the verdict it was held with and the ID of the
// rule that gave it, so that it is judged again only when the rule has
// changed. Open upgrades a version 1, 2 or 3 file in place (it rewrites the
// request keys of the dedupe and pending buckets; other entries are read as
// they are), a version 4 file's pending entries (without a verdict: those
// are judged at their deadline), and refuses any other version, so an older
// aggregator refuses a newer file.
const (
	schemaVersion   = "5"
	schemaVersionV1 = "1"
	schemaVersionV2 = "2"
	schemaVersionV3 = "3"
	schemaVersionV4 = "4"
)

// Buckets.
var (
	bucketMeta       = []byte("meta")
	bucketOutbox     = []byte("outbox")      // seq (8 bytes BE) -> JSON alert.Record
	bucketIDs        = []byte("ids")         // record ID -> idState, outbox seq, time (see idOutboxed)
	bucketExportedAt = []byte("exported_at") // time (8 bytes BE) + record ID -> nil
	bucketDedupe     = []byte("dedupe")      // requestKey -> detect.State, time
	bucketDedupeAt   = []byte("dedupe_at")   // time (8 bytes BE) + requestKey -> nil
	bucketPending    = []byte("pending")     // requestKey -> encoded Pending
	bucketPendingDue = []byte("pending_due") // deadline (8 bytes BE) + requestKey -> nil

	allBuckets = [][]byte{bucketMeta, bucketOutbox, bucketIDs, bucketExportedAt,
		bucketDedupe, bucketDedupeAt, bucketPending, bucketPendingDue, bucketLineage, bucketBaselines}

	keySchema = []byte("schema")
)

// ID states in bucketIDs. Since schema 3 every entry is written once, as
// idOutboxed with the time it was outboxed, and the record is exported once
// its seq is no longer in the outbox; idExported entries (export time) are
// left by schema 2 and read the same way.
const (
	idOutboxed byte = 1
	idExported byte = 2
)

// Options tune a Store. The zero value is the safe default.
type Options struct {
	// LockTimeout is how long Open waits for the file lock held by another
	// process (default 1s).
	LockTimeout time.Duration
	// NoSync skips fsync on commit. A process crash loses nothing (the data
	// is in the page cache), but a power loss or kernel crash can lose
	// batches already acknowledged to agents, or corrupt the file. Off by
	// default: durability of acknowledged data is the point of the store.
	NoSync bool
	// Now is the clock used for dedupe and export times (default time.Now).
	Now func() time.Time
}

// Store is the aggregator's durable state. It is safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	now   func() time.Time
	depth atomic.Int64
	added chan struct{}

	// Group commit: writers queue their work; one leader runs a transaction
	// for everything queued, then hands over to the next waiter.
	qmu     sync.Mutex
	queue   []*op
	leading bool

	// recent keeps the records this process added to the outbox, by outbox
	// sequence, until they are exported (at most recentMax), so that Outbox
	// hands the exporter the committed record instead of decoding it again.
	// The file stays the truth: a record not in recent (after a restart, or
	// when recent was full) is decoded from it.
	recentMu sync.Mutex
	recent   map[uint64]*alert.Record
}

// recentMax bounds the records kept in Store.recent: about a second of
// alerts at the highest rates measured (3,000/s), some 16 MiB (a record
// holds about 4 KiB with its strings).
const recentMax = 4096

// OpenDir creates dir if needed (mode 0700) and opens the store file in it.
func OpenDir(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	return Open(filepath.Join(dir, FileName), opts)
}

// Open opens (or creates) the store file at path. It fails with a clear error
// when another process holds the file, and with an error matching
// ErrCorrupt, never a panic, when the file is damaged (see verify).
func Open(path string, opts Options) (s *Store, err error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := verify(path, opts.LockTimeout); err != nil {
		return nil, err
	}
	// Verified; should bbolt still panic on this goroutine (the file
	// changed since), that is corruption too.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, corrupt(path, "%v", r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        opts.LockTimeout,
		NoSync:         opts.NoSync,
		NoFreelistSync: true, // rebuilt on open; halves the pages written per commit
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, openError(path, err, opts.LockTimeout)
	}
	s = &Store{db: db, path: path, now: opts.Now, added: make(chan struct{}, 1), recent: make(map[uint64]*alert.Record)}
	var depth int
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		v := meta.Get(keySchema)
		var upgrade func(*bolt.Tx) error
		switch {
		case v == nil, string(v) == schemaVersionV1, string(v) == schemaVersionV2, string(v) == schemaVersionV3:
			upgrade = upgradeRequestKeys
		case string(v) == schemaVersionV4:
			upgrade = upgradePendingV4
		case string(v) != schemaVersion:
			return fmt.Errorf("unsupported schema version %q (this aggregator reads %q to %q): written by a newer aggregator?", v, schemaVersionV1, schemaVersion)
		}
		if upgrade != nil {
			if err := upgrade(tx); err != nil {
				return fmt.Errorf("upgrade schema %q to %q: %w", v, schemaVersion, err)
			}
			if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
				return fmt.Errorf("write schema version: %w", err)
			}
		}
		depth = tx.Bucket(bucketOutbox).Stats().KeyN
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	s.depth.Store(int64(depth))
	return s, nil
}

// Path returns the store's file.
func (s *Store) Path() string { return s.path }

// Close closes the store. Commits in progress finish first.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close state %s: %w", s.path, err)
	}
	return nil
}

// Added returns a channel that receives a value after a Commit that added
// records to the outbox (coalesced: one value may stand for several
// commits). It is meant for one consumer, the exporter's drain loop.
func (s *Store) Added() <-chan struct{} { return s.added }

// Depth returns the number of records in the outbox.
func (s *Store) Depth() int { return int(s.depth.Load()) }

// States returns the dedupe state of each key; keys absent from the result
// are detect.StateNone.
func (s *Store) States(keys []string) (map[string]detect.State, error) {
	m := make(map[string]detect.State, len(keys))
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDedupe)
		for _, k := range keys {
			if v := b.Get(requestKey(k)); len(v) > 0 {
				m[k] = detect.State(v[0])
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read dedupe states: %w", err)
	}
	return m, nil
}

// Pending is a non-final stage held for the stage grace.
type Pending struct {
	Key      string
	Deadline time.Time
	Cluster  string
	Node     string
	// Event is the held event as the aggregator received it: an encoded
	// tokenwatchv1.TokenEvent.
	Event []byte
	// Verdict is the rule's verdict on Event when it was held; its Rule is
	// 0 for an entry stored before schema 5 (the event was not judged yet).
	Verdict rule.Verdict
	// Unless lists the recorded states of Key this entry does not replace
	// (detect.Step.Unless): the store leaves such a key as it is. It is
	// checked inside the commit's transaction, so concurrent batches that
	// decided from the same read cannot undo a decision. It is not stored.
	Unless []detect.State
}

// Change is the outcome of one batch, committed atomically.
type Change struct {
	// Records go to the outbox; one whose ID is already outboxed or was
	// exported within the retention is skipped.
	Records []alert.Record
	// Pending entries are stored (replacing one with the same key) and mark
	// their key Pending, unless the key's recorded state is one of the
	// entry's Unless (detect.Plan decides which).
	Pending []Pending
	// Done marks keys Done and removes their pending entries.
	Done []string
	// DoneAlone marks keys DoneAlone (their lone RequestReceived was
	// alerted after the stage grace) and removes their pending entries.
	DoneAlone []string
	// LineagePut stores token lineage entries (replacing those with the
	// same key) and LineageDelete deletes entries by key, as
	// lineage.State.Changes returns them; LineageEntries reads them back.
	LineagePut    []lineage.Entry
	LineageDelete []string
	// Baselines stores audit policy baselines, in order (one whose Policy
	// is not Known deletes), as silence.Tracker.Baselines returns them;
	// Store.Baselines reads them back.
	Baselines []silence.Baseline
}

// Empty reports whether c changes nothing.
func (c *Change) Empty() bool {
	return len(c.Records) == 0 && len(c.Pending) == 0 && len(c.Done) == 0 && len(c.DoneAlone) == 0 &&
		len(c.LineagePut) == 0 && len(c.LineageDelete) == 0 && len(c.Baselines) == 0
}

// Commit writes c in one transaction and returns once it is durable. It
// returns the number of records added to the outbox. An empty change returns
// at once without touching the file.
func (s *Store) Commit(c Change) (added int, err error) {
	return s.Submit(c)()
}

// Submit queues c for commit and returns at once; wait returns what Commit
// returns, once c is durable. Changes are committed in Submit order, so a
// caller can decide under its own lock, Submit, release the lock and wait
// outside it: concurrent batches then share one transaction and one fsync.
// The effects of a change are not visible to States before it committed.
// The store keeps c's records until they are exported: the caller must not
// modify them after Submit.
func (s *Store) Submit(c Change) (wait func() (added int, err error)) {
	if c.Empty() {
		return func() (int, error) { return 0, nil }
	}
	recs, pend, err := encodeChange(c)
	if err != nil {
		return func() (int, error) { return 0, err }
	}
	lin, err := encodeLineage(c.LineagePut)
	if err != nil {
		return func() (int, error) { return 0, err }
	}
	base, err := encodeBaselines(c.Baselines)
	if err != nil {
		return func() (int, error) { return 0, err }
	}

	var added int
	var outboxed []uint64 // outbox seq of c.Records[i], 0 when not added
	o := s.enqueue(func(tx *bolt.Tx) error {
		added = 0
		outboxed = outboxed[:0]
		now := s.now()
		var err error
		added, outboxed, err = putRecords(tx, recs, outboxed, now)
		if err != nil {
			return err
		}
		if err := putPending(tx, pend, c.Pending, now); err != nil {
			return err
		}
		if err := putLineage(tx, lin, c.LineageDelete); err != nil {
			return err
		}
		if err := putBaselines(tx, base); err != nil {
			return err
		}
		return markDone(tx, c, now)
	}, func() {
		if added > 0 {
			s.remember(outboxed, c.Records)
			s.depth.Add(int64(added))
			select {
			case s.added <- struct{}{}:
			default:
			}
		}
	})
	return sync.OnceValues(func() (int, error) {
		if err := s.await(o); err != nil {
			return 0, fmt.Errorf("commit to state %s: %w", s.path, err)
		}
		return added, nil
	})
}

// encoded is one key and value a change writes.
type encoded struct {
	id  []byte
	val []byte
}

// encodeChange encodes c's records (bounding each in place first) and
// pending entries before the transaction, so that it only writes.
func encodeChange(c Change) (recs, pend []encoded, err error) {
	recs = make([]encoded, len(c.Records))
	for i := range c.Records {
		r := &c.Records[i]
		if r.ID == "" {
			return nil, nil, fmt.Errorf("commit: record %d (%s) has no ID", i, r.EventName)
		}
		*r, _ = alert.Bounded(*r)
		v, err := json.Marshal(r)
		if err != nil {
			return nil, nil, fmt.Errorf("commit: encode record %.64s: %w", r.ID, err)
		}
		recs[i] = encoded{id: idKey(r.ID), val: v}
	}
	pend = make([]encoded, len(c.Pending))
	for i := range c.Pending {
		p := &c.Pending[i]
		if p.Key == "" {
			return nil, nil, fmt.Errorf("commit: pending entry %d has no key", i)
		}
		pend[i] = encoded{id: requestKey(p.Key), val: encodePending(p)}
	}
	return recs, pend, nil
}

// putRecords puts each record not seen before in the outbox and marks its ID.
// It appends each record's outbox sequence, 0 when it was seen before, to
// outboxed, and returns how many it added.
func putRecords(tx *bolt.Tx, recs []encoded, outboxed []uint64, now time.Time) (added int, _ []uint64, _ error) {
	outbox, ids := tx.Bucket(bucketOutbox), tx.Bucket(bucketIDs)
	for _, r := range recs {
		if ids.Get(r.id) != nil {
			outboxed = append(outboxed, 0)
			continue
		}
		seq, err := outbox.NextSequence()
		if err != nil {
			return added, outboxed, fmt.Errorf("next outbox sequence: %w", err)
		}
		if err := outbox.Put(u64(seq), r.val); err != nil {
			return added, outboxed, fmt.Errorf("put outbox %d: %w", seq, err)
		}
		if err := ids.Put(r.id, idValue(idOutboxed, seq, now)); err != nil {
			return added, outboxed, fmt.Errorf("put record id: %w", err)
		}
		outboxed = append(outboxed, seq)
		added++
	}
	return added, outboxed, nil
}

// putPending stores each pending entry, encoded in pend, with its deadline,
// unless its request's recorded state is one the entry does not replace.
func putPending(tx *bolt.Tx, pend []encoded, pending []Pending, now time.Time) error {
	for i, p := range pend {
		if st, _ := dedupeMark(tx, p.id); slices.Contains(pending[i].Unless, st) {
			continue
		}
		if err := deletePending(tx, p.id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPending).Put(p.id, p.val); err != nil {
			return fmt.Errorf("put pending: %w", err)
		}
		if err := tx.Bucket(bucketPendingDue).Put(timeKey(pending[i].Deadline, p.id), nil); err != nil {
			return fmt.Errorf("put pending deadline: %w", err)
		}
		if err := setDedupeMark(tx, p.id, detect.StatePending, now); err != nil {
			return err
		}
	}
	return nil
}

// markDone drops the pending entries of c's finished requests and marks them
// done, or done alone.
func markDone(tx *bolt.Tx, c Change, now time.Time) error {
	for _, d := range []struct {
		keys []string
		st   detect.State
	}{{c.Done, detect.StateDone}, {c.DoneAlone, detect.StateDoneAlone}} {
		for _, k := range d.keys {
			key := requestKey(k)
			if err := deletePending(tx, key); err != nil {
				return err
			}
			if err := setDedupeMark(tx, key, d.st, now); err != nil {
				return err
			}
		}
	}
	return nil
}

// DuePending returns up to max pending entries (all if max <= 0) whose
// deadline is not after now, earliest first. They stay stored until a Commit
// marks their key Done.
func (s *Store) DuePending(now time.Time, max int) ([]Pending, error) {
	var out []Pending
	limit := timeKey(now, nil)
	err := s.db.View(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketPending)
		c := tx.Bucket(bucketPendingDue).Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k[:8], limit) <= 0; k, _ = c.Next() {
			if max > 0 && len(out) >= max {
				break
			}
			key := k[8:]
			v := pb.Get(key)
			if v == nil {
				continue // cannot happen: index and entries change together
			}
			p, err := decodePending(v)
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read due pending entries: %w", err)
	}
	return out, nil
}

// NextDeadline returns the earliest pending deadline, if any.
func (s *Store) NextDeadline() (time.Time, bool, error) {
	var (
		t  time.Time
		ok bool
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketPendingDue).Cursor().First(); k != nil {
			t, ok = keyTime(k), true
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read next pending deadline: %w", err)
	}
	return t, ok, nil
}

// remember keeps recs[i] as the record of outbox seq[i] (0: not added).
func (s *Store) remember(seq []uint64, recs []alert.Record) {
	s.recentMu.Lock()
	defer s.recentMu.Unlock()
	for i, q := range seq {
		if q != 0 && len(s.recent) < recentMax {
			s.recent[q] = &recs[i]
		}
	}
}

// recalled returns the kept record of outbox seq, if any.
func (s *Store) recalled(seq uint64) (*alert.Record, bool) {
	s.recentMu.Lock()
	defer s.recentMu.Unlock()
	r, ok := s.recent[seq]
	return r, ok
}

// forget drops the kept records of these outbox seqs.
func (s *Store) forget(seqs []uint64) {
	s.recentMu.Lock()
	defer s.recentMu.Unlock()
	for _, q := range seqs {
		delete(s.recent, q)
	}
}

// Outbox returns up to max records (all if max <= 0), oldest first. The
// records (their slices) may be shared with the store: callers must not
// modify them.
func (s *Store) Outbox(max int) ([]alert.Record, error) {
	var out []alert.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if max > 0 && len(out) >= max {
				break
			}
			if r, ok := s.recalled(binary.BigEndian.Uint64(k)); ok {
				out = append(out, *r)
				continue
			}
			var r alert.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode outbox record %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return out, nil
}

// Exported removes the records with these IDs from the outbox and remembers
// the IDs as exported (for the retention), so that the same record is never
// outboxed again. Unknown or already exported IDs are ignored.
func (s *Store) Exported(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	var removed []uint64
	err := s.update(func(tx *bolt.Tx) error {
		removed = removed[:0]
		now := s.now()
		outbox, idb, at := tx.Bucket(bucketOutbox), tx.Bucket(bucketIDs), tx.Bucket(bucketExportedAt)
		for _, id := range ids {
			key := idKey(id)
			v := idb.Get(key)
			if len(v) != 17 || v[0] != idOutboxed {
				continue
			}
			seq := binary.BigEndian.Uint64(v[1:9])
			okey := u64(seq)
			if outbox.Get(okey) == nil {
				continue // exported before
			}
			if err := outbox.Delete(okey); err != nil {
				return fmt.Errorf("delete outbox %d: %w", seq, err)
			}
			if err := at.Put(timeKey(now, key), nil); err != nil {
				return fmt.Errorf("put export time: %w", err)
			}
			removed = append(removed, seq)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark exported in state %s: %w", s.path, err)
	}
	s.forget(removed)
	s.depth.Add(-int64(len(removed)))
	return nil
}

// pruneChunk bounds the size of one prune transaction.
const pruneChunk = 10000

// Prune forgets dedupe marks and exported record IDs recorded before
// now-retention and returns how many it removed. Marks of keys with a pending
// entry are kept, and so are records still in the outbox.
func (s *Store) Prune(now time.Time, retention time.Duration) (int, error) {
	cutoff := timeKey(now.Add(-retention), nil)
	total := 0
	for {
		var n int
		var more bool
		err := s.update(func(tx *bolt.Tx) error {
			n, more = 0, false
			var err error
			n, more, err = pruneIndex(tx, bucketDedupeAt, cutoff, pruneChunk, func(key []byte, at []byte) (bool, error) {
				if tx.Bucket(bucketPending).Get(key) != nil {
					return false, nil
				}
				b := tx.Bucket(bucketDedupe)
				if v := b.Get(key); len(v) == 9 && bytes.Equal(v[1:], at) {
					return true, b.Delete(key)
				}
				return true, nil // stale index entry
			})
			if err != nil || more {
				return err
			}
			m, more2, err := pruneIndex(tx, bucketExportedAt, cutoff, pruneChunk-n, func(key []byte, at []byte) (bool, error) {
				// An ID has one export time entry at most: it is outboxed
				// once while it is known, and exported once.
				b := tx.Bucket(bucketIDs)
				v := b.Get(key)
				switch {
				case len(v) != 17:
				case v[0] == idExported && bytes.Equal(v[9:], at), // schema 2
					v[0] == idOutboxed && tx.Bucket(bucketOutbox).Get(v[1:9]) == nil:
					return true, b.Delete(key)
				}
				return true, nil // stale index entry
			})
			n += m
			more = more2
			return err
		})
		if err != nil {
			return total, fmt.Errorf("prune state %s: %w", s.path, err)
		}
		total += n
		if !more {
			return total, nil
		}
	}
}

// pruneIndex walks a time index up to cutoff, calling drop for each entry;
// when drop says so, the index entry goes too. It stops after limit entries
// and reports whether more remain.
func pruneIndex(tx *bolt.Tx, index, cutoff []byte, limit int, drop func(key, at []byte) (bool, error)) (n int, more bool, err error) {
	var keys [][]byte
	c := tx.Bucket(index).Cursor()
	for k, _ := c.First(); k != nil && bytes.Compare(k[:8], cutoff) < 0; k, _ = c.Next() {
		if len(keys) >= limit {
			more = true
			break
		}
		keys = append(keys, bytes.Clone(k))
	}
	b := tx.Bucket(index)
	for _, k := range keys {
		del, err := drop(k[8:], k[:8])
		if err != nil {
			return n, false, err
		}
		if del {
			if err := b.Delete(k); err != nil {
				return n, false, err
			}
			n++
		}
	}
	// Entries kept (pending keys) do not count: if all were kept, stop.
	if n == 0 {
		more = false
	}
	return n, more, nil
}

func dedupeMark(tx *bolt.Tx, key []byte) (detect.State, []byte) {
	v := tx.Bucket(bucketDedupe).Get(key)
	if len(v) != 9 {
		return detect.StateNone, nil
	}
	return detect.State(v[0]), v[1:]
}

func setDedupeMark(tx *bolt.Tx, key []byte, st detect.State, now time.Time) error {
	_, old := dedupeMark(tx, key)
	at := tx.Bucket(bucketDedupeAt)
	if old != nil {
		if err := at.Delete(append(bytes.Clone(old), key...)); err != nil {
			return fmt.Errorf("delete dedupe time: %w", err)
		}
	}
	v := make([]byte, 9)
	v[0] = byte(st)
	binary.BigEndian.PutUint64(v[1:], timeBits(now))
	if err := tx.Bucket(bucketDedupe).Put(key, v); err != nil {
		return fmt.Errorf("put dedupe mark: %w", err)
	}
	if err := at.Put(timeKey(now, key), nil); err != nil {
		return fmt.Errorf("put dedupe time: %w", err)
	}
	return nil
}

func deletePending(tx *bolt.Tx, key []byte) error {
	pb := tx.Bucket(bucketPending)
	v := pb.Get(key)
	if len(v) < 8 {
		return nil
	}
	if err := tx.Bucket(bucketPendingDue).Delete(append(bytes.Clone(v[:8]), key...)); err != nil {
		return fmt.Errorf("delete pending deadline: %w", err)
	}
	if err := pb.Delete(key); err != nil {
		return fmt.Errorf("delete pending: %w", err)
	}
	return nil
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// timeBits orders times as unsigned big-endian integers (times before 1970
// clamp to 0).
func timeBits(t time.Time) uint64 {
	n := t.UnixNano()
	if n < 0 {
		return 0
	}
	return uint64(n)
}

func timeKey(t time.Time, key []byte) []byte {
	b := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(b, timeBits(t))
	return append(b, key...)
}

func keyTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
}

func idValue(st byte, seq uint64, at time.Time) []byte {
	v := make([]byte, 17)
	v[0] = st
	binary.BigEndian.PutUint64(v[1:9], seq)
	binary.BigEndian.PutUint64(v[9:], timeBits(at))
	return v
}

// requestKeyBytes is the length of a stored request key.
const requestKeyBytes = sha256.Size

// requestKey is the stored key of a request key: its SHA-256. A request key
// holds the auditID, which a client sets (the Audit-ID header, logged as
// sent, of any length) while bbolt refuses keys over 32 KiB; the digest has
// a fixed size and keeps requests apart as the full key would.
func requestKey(k string) []byte {
	sum := sha256.Sum256([]byte(k))
	return sum[:]
}

// maxIDKeyBytes bounds a record ID used as a key as it is. Record IDs are
// digests (a few dozen bytes); a longer one is stored by its digest, so no
// record can fail a commit by its ID.
const maxIDKeyBytes = 128

// idKey is the stored key of a record ID.
func idKey(id string) []byte {
	if len(id) <= maxIDKeyBytes {
		return []byte(id)
	}
	sum := sha256.Sum256([]byte(id))
	return []byte("sha256:" + hex.EncodeToString(sum[:]))
}

// upgradeRequestKeys rewrites the request-keyed buckets of a schema 1 to 3
// file, which used the request key itself as the key, under requestKey,
// and the pending entries in this schema's layout (without a verdict).
func upgradeRequestKeys(tx *bolt.Tx) error {
	plain := func(k, v []byte) (kv, error) { return kv{requestKey(string(k)), bytes.Clone(v)}, nil }
	timed := func(k, _ []byte) (kv, error) {
		if len(k) < 8 {
			return kv{}, fmt.Errorf("index entry of %d bytes", len(k))
		}
		return kv{timeKey(keyTime(k), requestKey(string(k[8:]))), nil}, nil
	}
	pending := func(k, v []byte) (kv, error) {
		p, err := decodePendingV3(string(k), v)
		if err != nil {
			return kv{}, err
		}
		return kv{requestKey(p.Key), encodePending(&p)}, nil
	}
	for _, b := range []struct {
		name []byte
		conv func(k, v []byte) (kv, error)
	}{{bucketDedupe, plain}, {bucketDedupeAt, timed}, {bucketPending, pending}, {bucketPendingDue, timed}} {
		if err := rewriteBucket(tx, b.name, b.conv); err != nil {
			return err
		}
	}
	return nil
}

// upgradePendingV4 rewrites the pending entries of a schema 4 file in the
// schema 5 layout, with no verdict.
func upgradePendingV4(tx *bolt.Tx) error {
	return rewriteBucket(tx, bucketPending, func(k, v []byte) (kv, error) {
		p, err := decodePendingV4(v)
		return kv{bytes.Clone(k), encodePending(&p)}, err
	})
}

// kv is a bucket entry.
type kv struct{ k, v []byte }

// rewriteBucket replaces every entry of bucket name with what conv makes
// of it; the first error stops it.
func rewriteBucket(tx *bolt.Tx, name []byte, conv func(k, v []byte) (kv, error)) error {
	var all []kv
	err := tx.Bucket(name).ForEach(func(k, v []byte) error {
		e, err := conv(k, v)
		all = append(all, e)
		return err
	})
	if err != nil {
		return fmt.Errorf("bucket %s: %w", name, err)
	}
	if err := tx.DeleteBucket(name); err != nil {
		return fmt.Errorf("bucket %s: %w", name, err)
	}
	b, err := tx.CreateBucket(name)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", name, err)
	}
	for _, e := range all {
		if err := b.Put(e.k, e.v); err != nil {
			return fmt.Errorf("bucket %s: %w", name, err)
		}
	}
	return nil
}

// encodePending lays out deadline (8 bytes), then key, cluster and node
// (each a uvarint length + bytes), then the verdict (encodeVerdict), then
// the event bytes.
func encodePending(p *Pending) []byte {
	v := &p.Verdict
	b := make([]byte, 8, 8+5*binary.MaxVarintLen64+len(p.Key)+len(p.Cluster)+len(p.Node)+9+len(v.By)+len(v.Mismatch)+len(p.Event))
	binary.BigEndian.PutUint64(b, timeBits(p.Deadline))
	for _, s := range []string{p.Key, p.Cluster, p.Node} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = encodeVerdict(b, v)
	return append(b, p.Event...)
}

// Flags of a stored verdict.
const (
	verdictMatch     = 1 << 0
	verdictExcluded  = 1 << 1
	verdictByDefault = 1 << 2
)

// encodeVerdict appends v: its rule ID (8 bytes), a flags byte, then By
// and Mismatch (each a uvarint length + bytes).
func encodeVerdict(b []byte, v *rule.Verdict) []byte {
	b = binary.BigEndian.AppendUint64(b, v.Rule)
	var flags byte
	if v.Match {
		flags |= verdictMatch
	}
	if v.Excluded {
		flags |= verdictExcluded
	}
	if v.ByDefault {
		flags |= verdictByDefault
	}
	b = append(b, flags)
	for _, s := range []string{v.By, v.Mismatch} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// pendingLayout is the schema of a stored pending value.
type pendingLayout int

const (
	layoutV3 pendingLayout = iota // no key (it was the entry's key), no verdict
	layoutV4                      // no verdict
	layoutV5                      // this schema
)

// decodePending reads what encodePending wrote.
func decodePending(v []byte) (Pending, error) {
	return decodePendingFields(v, "", layoutV5)
}

// decodePendingV4 reads a pending entry of schema 4, which had no verdict.
func decodePendingV4(v []byte) (Pending, error) {
	return decodePendingFields(v, "", layoutV4)
}

// decodePendingV3 reads a pending entry of schema 3 and earlier, which had
// no key in its value (key is the entry's key) and no verdict.
func decodePendingV3(key string, v []byte) (Pending, error) {
	return decodePendingFields(v, key, layoutV3)
}

// decodePendingFields reads deadline, key (unless the layout has none: key
// is given), cluster, node, the verdict (when the layout has one) and the
// event.
func decodePendingFields(v []byte, key string, layout pendingLayout) (Pending, error) {
	bad := errors.New("decode pending entry: truncated")
	if len(v) < 8 {
		return Pending{}, bad
	}
	p := Pending{Deadline: keyTime(v)}
	rest := v[8:]
	str := func() (string, bool) {
		n, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < n {
			return "", false
		}
		s := string(rest[w : w+int(n)])
		rest = rest[w+int(n):]
		return s, true
	}
	strs := func(fields ...*string) bool {
		for _, f := range fields {
			var ok bool
			if *f, ok = str(); !ok {
				return false
			}
		}
		return true
	}
	fields := []*string{&p.Key, &p.Cluster, &p.Node}
	if layout == layoutV3 {
		p.Key, fields = key, fields[1:]
	}
	if !strs(fields...) {
		return Pending{}, bad
	}
	if layout == layoutV5 {
		if len(rest) < 9 {
			return Pending{}, bad
		}
		vd := &p.Verdict
		flags := rest[8]
		vd.Rule = binary.BigEndian.Uint64(rest)
		vd.Match, vd.Excluded, vd.ByDefault = flags&verdictMatch != 0, flags&verdictExcluded != 0, flags&verdictByDefault != 0
		rest = rest[9:]
		if !strs(&vd.By, &vd.Mismatch) {
			return Pending{}, bad
		}
	}
	p.Event = bytes.Clone(rest)
	return p, nil
}
