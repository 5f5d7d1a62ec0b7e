package detect

import (
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// Held is a request held pending (ActionHold), as its deadline finds it.
type Held struct {
	// Deadline is when the held event alerts alone if no completion came.
	Deadline time.Time
	// Event is the held event, nil when its stored form could not be read.
	Event *audit.Event
	// Verdict is the rule's verdict on Event as the rule in force at the
	// deadline gives it: the one the event was held with, or a new one
	// when the exclusions changed while it waited.
	Verdict rule.Verdict
}

// DueStep is what Due decides for one held request.
type DueStep struct {
	// Action is ActionAlert (alert from the held event alone, with
	// event.outcome=unknown) or ActionIgnore.
	Action Action
	// Mark is the state to record the request in: StateDoneAlone after an
	// alert alone (a completion arriving later is dropped as late),
	// StateDone when its event no longer alerts or could not be read, and
	// StatePending (nothing to record) when its deadline has not passed.
	Mark State
}

// Due is the deadline side of the request lifecycle: for each held request,
// in order, what happens to it at now. A held request is due when its
// deadline is not after now. It is a pure function: it reads no clock and
// changes nothing.
func Due(held []Held, now time.Time) []DueStep {
	steps := make([]DueStep, len(held))
	for i, h := range held {
		switch {
		case h.Deadline.After(now):
			steps[i] = DueStep{Action: ActionIgnore, Mark: StatePending}
		case h.Event == nil || !h.Verdict.Alerts():
			steps[i] = DueStep{Action: ActionIgnore, Mark: StateDone}
		default:
			steps[i] = DueStep{Action: ActionAlert, Mark: StateDoneAlone}
		}
	}
	return steps
}
