package uses

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"maps"
	"slices"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// maxStarted bounds the long-running requests remembered between their
// ResponseStarted and their ResponseComplete (8 bytes a ring slot, about
// 40 a map entry: well under 1 MiB).
const maxStarted = 1 << 13

// StartsKeyLen is the length of the key of the hashes of remembered
// starts.
const StartsKeyLen = 32

// stages decides which audit event of a request is its use. The apiserver
// logs one event per stage, all with the request's auditID: RequestReceived,
// ResponseStarted for a long-running request (watch, exec, attach,
// portforward, proxy, log), then ResponseComplete, or Panic. A request
// counts once, described by the stage that carries its outcome:
//
//   - RequestReceived is never a use (it has no response status);
//   - ResponseStarted is the use of a long-running request, which is thus
//     reported when it starts (an exec session, not when it ends); its
//     auditID is remembered;
//   - ResponseComplete or Panic is the use, unless its request's
//     ResponseStarted was taken: then it is skipped and forgotten;
//   - an event without a known stage is a use.
//
// The auditIDs of the last maxStarted ResponseStarted uses are remembered
// (as 64-bit keyed hashes, in a ring): a long-running request whose end
// comes after maxStarted further long-running requests started counts
// twice, at its start and at its end. The starts a restart needs survive it
// in the checkpoint (acked): the open ones, and those whose end was read in
// a block not yet acknowledged, which a restart reads again. A start is
// added at once (one whose line a restart reads again is only added
// again); an end is applied when the ticket of the block being read when
// it was read is acknowledged. Not safe for concurrent use.
type stages struct {
	max       int
	key       [StartsKeyLen]byte
	buf       []byte
	open      map[uint64]struct{} // started, not ended
	ring      []uint64            // the hashes of the last starts, oldest at next once full
	next      int
	forgotten uint64 // starts dropped from the ring while open

	ends  []stageEnd          // not yet acknowledged, in ticket order
	acked map[uint64]struct{} // open, or ended in a block not acknowledged
	snap  []uint64            // acked, sorted; nil when it changed since
	gen   uint64              // counts the changes of acked
}

// stageEnd is a start ended or forgotten while the block of ticket was
// read.
type stageEnd struct{ ticket, h uint64 }

func newStages(n int) *stages {
	s := &stages{max: max(n, 1), open: map[uint64]struct{}{}, acked: map[uint64]struct{}{}}
	rand.Read(s.key[:])
	return s
}

// use reports whether e, one stage of a request, is the request's use;
// ticket is the block being read.
func (s *stages) use(e *audit.Event, ticket uint64) bool {
	switch e.Stage {
	case audit.StageRequestReceived:
		return false
	case audit.StageResponseStarted:
		if e.AuditID != "" {
			s.start(s.hash(e.AuditID), ticket)
		}
		return true
	case audit.StageResponseComplete, audit.StagePanic:
		if e.AuditID == "" {
			return true
		}
		h := s.hash(e.AuditID)
		if _, ok := s.open[h]; ok {
			s.end(h, ticket)
			return false
		}
	}
	return true
}

// hash is the keyed hash of an auditID: clients choose their Audit-ID, so
// one must not be able to aim at another's.
func (s *stages) hash(id string) uint64 {
	s.buf = append(append(s.buf[:0], s.key[:]...), id...)
	sum := sha256.Sum256(s.buf)
	return binary.BigEndian.Uint64(sum[:8])
}

// start remembers h, forgetting the oldest start when the ring is full.
func (s *stages) start(h, ticket uint64) {
	if len(s.ring) < s.max {
		s.ring = append(s.ring, h)
	} else {
		old := s.ring[s.next]
		if _, ok := s.open[old]; ok {
			s.end(old, ticket)
			s.forgotten++
		}
		s.ring[s.next] = h
		s.next = (s.next + 1) % s.max
	}
	s.open[h] = struct{}{}
	if _, ok := s.acked[h]; !ok {
		s.acked[h] = struct{}{}
		s.snap = nil
		s.gen++
	}
}

// end forgets the open start h.
func (s *stages) end(h, ticket uint64) {
	delete(s.open, h)
	s.ends = append(s.ends, stageEnd{ticket: ticket, h: h})
}

// acknowledged applies the ends read while reading the blocks up to ticket
// to acked.
func (s *stages) acknowledged(ticket uint64) {
	n := 0
	for ; n < len(s.ends) && s.ends[n].ticket <= ticket; n++ {
		h := s.ends[n].h
		if _, open := s.open[h]; !open {
			if _, ok := s.acked[h]; ok {
				delete(s.acked, h)
				s.snap = nil
				s.gen++
			}
		}
	}
	s.ends = append(s.ends[:0], s.ends[n:]...)
}

// settled returns the hash key and acked's hashes, sorted, with the count
// of acked's changes; the slice is shared and must not be modified. The
// key is nil when acked is empty.
func (s *stages) settled() (key []byte, hashes []uint64, gen uint64) {
	if len(s.acked) == 0 {
		return nil, nil, s.gen
	}
	if s.snap == nil {
		s.snap = slices.Sorted(maps.Keys(s.acked))
	}
	return s.key[:], s.snap, s.gen
}

// restore takes the starts a checkpoint kept, hashed with key, as open
// and acknowledged. It is called before any block is read.
func (s *stages) restore(key []byte, hashes []uint64) {
	if len(key) != StartsKeyLen || len(hashes) == 0 {
		return
	}
	copy(s.key[:], key)
	for _, h := range hashes[max(len(hashes)-s.max, 0):] {
		s.ring = append(s.ring, h)
		s.open[h] = struct{}{}
		s.acked[h] = struct{}{}
	}
	s.snap = nil
	s.gen++
}
