package detect

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

func TestDue(t *testing.T) {
	now := time.Date(2026, 11, 26, 23, 9, 14, 0, time.UTC)
	ev := &audit.Event{AuditID: "a", Stage: "RequestReceived", RequestReceivedTimestamp: rrt1}
	alerts, excluded, unmatched := rule.Verdict{Match: true}, rule.Verdict{Match: true, Excluded: true}, rule.Verdict{}
	alone := DueStep{Action: ActionAlert, Mark: StateDoneAlone}
	done := DueStep{Action: ActionIgnore, Mark: StateDone}
	waits := DueStep{Action: ActionIgnore, Mark: StatePending}
	tests := []struct {
		name string
		give []Held
		want []DueStep
	}{
		{"nothing", nil, []DueStep{}},
		{"due alerts alone", []Held{{Deadline: now.Add(-time.Second), Event: ev, Verdict: alerts}}, []DueStep{alone}},
		{"due at now", []Held{{Deadline: now, Event: ev, Verdict: alerts}}, []DueStep{alone}},
		{"excluded meanwhile", []Held{{Deadline: now, Event: ev, Verdict: excluded}}, []DueStep{done}},
		{"no longer matches", []Held{{Deadline: now, Event: ev, Verdict: unmatched}}, []DueStep{done}},
		{"unreadable", []Held{{Deadline: now, Verdict: alerts}}, []DueStep{done}},
		{"not yet due", []Held{{Deadline: now.Add(time.Nanosecond), Event: ev, Verdict: alerts}}, []DueStep{waits}},
		{"each its own", []Held{
			{Deadline: now, Event: ev, Verdict: alerts},
			{Deadline: now, Event: ev, Verdict: excluded},
			{Deadline: now, Event: ev, Verdict: alerts},
		}, []DueStep{alone, done, alone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Due(tt.give, now)); diff != "" {
				t.Errorf("Due (-want +got):\n%s", diff)
			}
		})
	}
}
