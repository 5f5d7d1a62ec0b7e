package pipeline

import (
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// TestHeldJudgedOnce: a held event keeps the verdict it arrived with, and
// the rule is not evaluated again at its deadline while it is still the
// rule in force; after a reload, or for a verdict that names no rule, the
// rule in force judges it. The verdicts given here carry a marker in
// Mismatch (reported as tokenwatch.exclusion.mismatch) that a new
// evaluation would not write.
func TestHeldJudgedOnce(t *testing.T) {
	const marker = "judged on arrival"
	alice := config.Default()
	alice.Exclusions.Add = []rule.Pattern{{User: "alice"}}
	other := config.Default()
	other.Exclusions.Add = []rule.Pattern{{User: "somebody-else"}}
	tests := []struct {
		name   string
		reload *config.Config // applied while the event is held
		noRule bool           // the verdict names no rule (Rule 0)
		want   []string       // tokenwatch.exclusion.mismatch of the alerts
	}{
		{"same rule", nil, false, []string{marker}},
		{"reloaded, still alerts", &other, false, []string{"<absent>"}},
		{"reloaded, now excluded", &alice, false, nil},
		{"verdict names no rule", nil, true, []string{"<absent>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, config.Default())
			b := batch("prod", "cp-1", received("alice", "a1", rrt1))
			v := rule.Verdict{Match: true, Mismatch: marker, Rule: f.p.rule.Load().ID()}
			if tt.noRule {
				v.Rule = 0
			}
			b.Verdicts = []rule.Verdict{v}
			if res := f.process(t, b); res.Held != 1 {
				t.Fatalf("Held = %d, want 1", res.Held)
			}
			if tt.reload != nil {
				if err := f.p.Apply(*tt.reload); err != nil {
					t.Fatal(err)
				}
			}
			f.clk.Add(2 * time.Second) // the default stage_grace
			f.tick(t)
			var got []string
			for _, r := range f.outbox(t) {
				if r.EventName == alert.EventTokenRequest {
					got = append(got, str(t, r, "tokenwatch.exclusion.mismatch"))
				}
			}
			if !equal(got, tt.want) {
				t.Errorf("alerts' mismatch = %q, want %q", got, tt.want)
			}
			if due, err := f.store.DuePending(t0.Add(time.Hour), 0); err != nil || len(due) != 0 {
				t.Errorf("pending after the deadline: %d, %v; want none", len(due), err)
			}
		})
	}
}
