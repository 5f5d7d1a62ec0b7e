package detect

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func TestPlan(t *testing.T) {
	now := time.Date(2026, 11, 26, 23, 9, 14, 0, time.UTC)
	const grace = 2 * time.Second
	hold := Step{Action: ActionHold, Deadline: now.Add(grace), Unless: []State{StateDone, StateDoneAlone}}
	alert, ignore, late := Step{Action: ActionAlert}, Step{Action: ActionIgnore}, Step{Action: ActionDropLate}
	req := func(key, stage string) Request {
		return Request{Key: key, Event: &audit.Event{AuditID: key, Stage: stage, RequestReceivedTimestamp: rrt1}}
	}
	incomplete := Request{Key: "i", Event: &audit.Event{Stage: "RequestReceived"}}
	tests := []struct {
		name   string
		stored map[string]State
		give   []Request
		want   []Step
	}{
		{"nothing", nil, nil, []Step{}},
		{"completion alerts", nil, []Request{req("a", "ResponseComplete")}, []Step{alert}},
		{"received is held", nil, []Request{req("a", "RequestReceived")}, []Step{hold}},
		{"pair in one batch", nil, []Request{req("a", "RequestReceived"), req("a", "ResponseComplete")}, []Step{hold, alert}},
		{"completion first", nil, []Request{req("a", "ResponseComplete"), req("a", "RequestReceived")}, []Step{alert, ignore}},
		{"duplicate completion", nil, []Request{req("a", "ResponseComplete"), req("a", "ResponseComplete")}, []Step{alert, ignore}},
		{"two requests", nil, []Request{req("a", "RequestReceived"), req("b", "ResponseComplete")}, []Step{hold, alert}},
		{"stored pending completes", map[string]State{"a": StatePending}, []Request{req("a", "ResponseComplete")}, []Step{alert}},
		{"stored pending, stage again", map[string]State{"a": StatePending}, []Request{req("a", "ResponseStarted")}, []Step{ignore}},
		{"stored done", map[string]State{"a": StateDone}, []Request{req("a", "RequestReceived"), req("a", "ResponseComplete")}, []Step{ignore, ignore}},
		{"stored done alone, completion late", map[string]State{"a": StateDoneAlone}, []Request{req("a", "ResponseComplete"), req("a", "Panic")}, []Step{late, late}},
		{"other key's state unused", map[string]State{"b": StateDone}, []Request{req("a", "ResponseComplete")}, []Step{alert}},
		{"incomplete alerts at once", nil, []Request{incomplete, incomplete}, []Step{alert, ignore}},
		{"incomplete stored", map[string]State{"i": StateDone}, []Request{incomplete}, []Step{ignore}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stored := map[string]State{}
			for k, v := range tt.stored {
				stored[k] = v
			}
			got := Plan(tt.stored, tt.give, now, grace)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Plan (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(stored, orEmpty(tt.stored)); diff != "" {
				t.Errorf("Plan changed the stored states (-before +after):\n%s", diff)
			}
		})
	}
}

func orEmpty(m map[string]State) map[string]State {
	if m == nil {
		return map[string]State{}
	}
	return m
}

// TestSettled: the states a hold leaves alone are exactly
// those a request does not leave once done.
func TestSettled(t *testing.T) {
	for _, s := range []State{StateNone, StatePending, StateDone, StateDoneAlone} {
		done := s == StateDone || s == StateDoneAlone
		in := false
		for _, x := range Settled() {
			in = in || x == s
		}
		if in != done {
			t.Errorf("Settled() holds %v: %v, want %v", s, in, done)
		}
	}
}
