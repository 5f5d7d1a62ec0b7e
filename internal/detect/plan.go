package detect

import (
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Request is one event of a batch with the key of its request
// (KeyOf(...).String()).
type Request struct {
	Key   string
	Event *audit.Event
}

// Step is what Plan decides for one event.
type Step struct {
	Action Action
	// Deadline is when an ActionHold's event alerts alone if no completion
	// comes: now plus the stage grace. Zero for the other actions.
	Deadline time.Time
	// Unless, for an ActionHold, lists the recorded states the hold must
	// not replace when it is stored: a request once done stays as it is (a
	// hold that raced its completion, or a re-sent stage, does not reopen
	// it), even when another batch recorded that meanwhile. Nil for the
	// other actions.
	Unless []State
}

// Plan is the request lifecycle of a batch: for each event, in order, the
// action Decide takes from the state stored for its request, or from the
// state an earlier event of the batch left it in (After). stored maps
// request keys to their recorded state; a key it lacks is StateNone. It is
// a pure function: it reads no clock (now is given) and changes nothing.
func Plan(stored map[string]State, reqs []Request, now time.Time, grace time.Duration) []Step {
	steps := make([]Step, len(reqs))
	local := make(map[string]State, len(reqs))
	for i, r := range reqs {
		s, ok := local[r.Key]
		if !ok {
			s = stored[r.Key]
		}
		act := Decide(s, r.Event)
		local[r.Key] = After(s, act)
		steps[i].Action = act
		if act == ActionHold {
			steps[i].Deadline = now.Add(grace)
			steps[i].Unless = Settled()
		}
	}
	return steps
}

// Settled lists the states a request does not leave once recorded: those a
// hold does not replace.
func Settled() []State { return []State{StateDone, StateDoneAlone} }
