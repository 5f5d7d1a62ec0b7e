package pipeline

import (
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// Screen judges an event by its subject, filled from whatever form the
// event is in (the ingest codec fills it from the encoded bytes), with the
// rule in force. It is the one place an event is judged on its way in:
// events it does not keep are only counted (Batch.Excluded and
// Batch.NotMatched), those it keeps reach Process with their verdict
// (Batch.Verdicts). A reload between Screen and Process only moves the
// event to the other side of the reload, as if it had arrived earlier. A
// nil subject does not match. Screen does not retain s or its strings.
func (p *Pipeline) Screen(s *rule.Subject) rule.Verdict {
	if s == nil {
		return rule.Verdict{}
	}
	return p.rule.Load().Judge(s)
}
