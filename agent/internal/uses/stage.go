package uses

import (
	"hash/maphash"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// maxStarted bounds the long-running requests remembered between their
// ResponseStarted and their ResponseComplete (8 bytes a ring slot, about
// 40 a map entry: well under 1 MiB).
const maxStarted = 1 << 13

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
// (as 64-bit hashes, in a ring): a long-running request whose end comes
// after maxStarted further long-running requests started, or after the
// agent restarted, counts twice, at its start and at its end. Not safe for
// concurrent use.
type stages struct {
	max       int
	seed      maphash.Seed
	open      map[uint64]struct{} // started, not ended
	ring      []uint64            // the hashes of the last starts, oldest at next once full
	next      int
	forgotten uint64 // starts dropped from the ring while open
}

func newStages(n int) *stages {
	return &stages{max: max(n, 1), seed: maphash.MakeSeed(), open: map[uint64]struct{}{}}
}

// use reports whether e, one stage of a request, is the request's use.
func (s *stages) use(e *audit.Event) bool {
	switch e.Stage {
	case audit.StageRequestReceived:
		return false
	case audit.StageResponseStarted:
		if e.AuditID != "" {
			s.start(maphash.String(s.seed, e.AuditID))
		}
		return true
	case audit.StageResponseComplete, audit.StagePanic:
		if e.AuditID == "" {
			return true
		}
		h := maphash.String(s.seed, e.AuditID)
		if _, ok := s.open[h]; ok {
			delete(s.open, h)
			return false
		}
	}
	return true
}

// start remembers h, forgetting the oldest start when the ring is full.
func (s *stages) start(h uint64) {
	if len(s.ring) < s.max {
		s.ring = append(s.ring, h)
	} else {
		old := s.ring[s.next]
		if _, ok := s.open[old]; ok {
			delete(s.open, old)
			s.forgotten++
		}
		s.ring[s.next] = h
		s.next = (s.next + 1) % s.max
	}
	s.open[h] = struct{}{}
}
