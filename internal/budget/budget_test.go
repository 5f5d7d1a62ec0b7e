package budget

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

var t0 = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC) // a multiple of 5m

func at(m float64) time.Time { return t0.Add(time.Duration(m * float64(time.Minute))) }

func TestOff(t *testing.T) {
	for _, cfg := range []Config{{}, {MaxAlerts: 0, Window: time.Minute}, {MaxAlerts: -1, Window: time.Minute}} {
		b := New(cfg)
		for i := 0; i < 1000; i++ {
			if !b.Admit(at(0), "u", fmt.Sprint(i)) {
				t.Fatalf("%+v: Admit #%d = false, want true (off)", cfg, i)
			}
		}
		if got := b.Flush(at(100)); len(got) != 0 {
			t.Errorf("%+v: Flush = %d records, want none", cfg, len(got))
		}
	}
}

func TestScenario(t *testing.T) {
	b := New(Config{MaxAlerts: 2, Window: 5 * time.Minute})
	steps := []struct {
		at      float64
		user    string
		want    bool
		flushes int // records from Flush(at) after Admit
	}{
		{0.5, "alice", true, 0},
		{1, "bob", true, 0},
		{2, "mallory", false, 0},
		{3, "mallory", false, 0},
		{4.9, "alice", false, 0},
		{5, "carol", true, 1}, // a new window: the last one's summary
		{6, "carol", true, 0},
		{7, "carol", false, 0},
	}
	var recs []alert.Record
	for i, s := range steps {
		if got := b.Admit(at(s.at), s.user, fmt.Sprint("id-", i)); got != s.want {
			t.Errorf("Admit(%v, %s) = %v, want %v", s.at, s.user, got, s.want)
		}
		f := b.Flush(at(s.at))
		if len(f) != s.flushes {
			t.Errorf("Flush(%v) = %d records, want %d", s.at, len(f), s.flushes)
		}
		recs = append(recs, f...)
	}
	if got := b.Flush(at(9.99)); len(got) != 0 {
		t.Errorf("Flush before the window ends = %d records", len(got))
	}
	recs = append(recs, b.Flush(at(10))...)
	if got := b.Flush(at(20)); len(got) != 0 {
		t.Errorf("second Flush = %d records, want none (once each)", len(got))
	}
	if len(recs) != 2 {
		t.Fatalf("summaries = %d, want 2", len(recs))
	}
	want := alert.Record{
		EventName: alert.EventPipeline,
		Time:      at(5),
		Severity:  alert.Low,
		Body:      "Alert budget of 2 per 5m0s exceeded: 3 token request alerts held back (mallory=2, alice=1).",
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", "alerts_suppressed"),
			alert.Int("tokenwatch.suppressed.count", 3),
			alert.Strings("tokenwatch.suppressed.users", []string{"mallory=2", "alice=1"}),
			alert.Strings("tokenwatch.suppressed.auditIDs", []string{"id-2", "id-3", "id-4"}),
			alert.String("tokenwatch.window.start", "2026-11-26T23:00:00Z"),
			alert.String("tokenwatch.window.end", "2026-11-26T23:05:00Z"),
			alert.Int("tokenwatch.budget.max_alerts", 2),
		},
	}
	if diff := cmp.Diff(want, recs[0], cmpopts.IgnoreFields(alert.Record{}, "ID")); diff != "" {
		t.Errorf("first summary (-want +got):\n%s", diff)
	}
	if c, _ := recs[1].Attr("tokenwatch.suppressed.count"); c.Int != 1 || !recs[1].Time.Equal(at(10)) {
		t.Errorf("second summary count %d at %v, want 1 at %v", c.Int, recs[1].Time, at(10))
	}
	if recs[0].ID == recs[1].ID || recs[0].ID == "" {
		t.Errorf("IDs %q and %q: want distinct, non-empty", recs[0].ID, recs[1].ID)
	}
}

// TestIdleWindows: a summary survives windows without any Admit, and
// windows without held-back alerts produce nothing.
func TestIdleWindows(t *testing.T) {
	b := New(Config{MaxAlerts: 1, Window: 5 * time.Minute})
	b.Admit(at(1), "a", "1")
	b.Admit(at(2), "b", "2")  // held
	b.Admit(at(31), "c", "3") // a later window, admitted: rolls the first
	recs := b.Flush(at(31))
	if len(recs) != 1 || !recs[0].Time.Equal(at(5)) {
		t.Fatalf("Flush = %d records (%v), want the first window's summary", len(recs), recs)
	}
	if got := b.Flush(at(40)); len(got) != 0 {
		t.Errorf("Flush = %d, want none", len(got))
	}
}

func TestClockStepsBack(t *testing.T) {
	b := New(Config{MaxAlerts: 1, Window: 5 * time.Minute})
	b.Admit(at(6), "a", "1")
	if b.Admit(at(4), "a", "2") {
		t.Error("Admit after the clock stepped back opened a fresh budget")
	}
	if recs := b.Flush(at(10)); len(recs) != 1 {
		t.Errorf("Flush = %d records, want 1", len(recs))
	}
}

func TestClose(t *testing.T) {
	b := New(Config{MaxAlerts: 1, Window: 5 * time.Minute})
	b.Admit(at(0), "a", "1")
	b.Admit(at(1), "a", "2")
	recs := b.Close(at(2))
	if len(recs) != 1 || !recs[0].Time.Equal(at(2)) {
		t.Fatalf("Close = %v, want one summary ending at %v", recs, at(2))
	}
	end, _ := recs[0].Attr("tokenwatch.window.end")
	if end.Str != "2026-11-26T23:02:00Z" {
		t.Errorf("window.end = %s", end.Str)
	}
	// A new budget for the same aligned window does not reuse the ID.
	n := New(Config{MaxAlerts: 1, Window: 5 * time.Minute})
	n.Admit(at(3), "a", "3")
	n.Admit(at(4), "a", "4")
	if again := n.Flush(at(5)); len(again) != 1 || again[0].ID == recs[0].ID {
		t.Errorf("summary after Close: %v, want one with another ID", again)
	}
	if got := b.Close(at(3)); len(got) != 0 {
		t.Errorf("second Close = %d records", len(got))
	}
}

func TestAuditIDsCapped(t *testing.T) {
	b := New(Config{MaxAlerts: 1, Window: time.Minute})
	for i := 0; i < MaxAuditIDs+51; i++ {
		b.Admit(at(0), fmt.Sprint("u", i%3), fmt.Sprint(i))
	}
	recs := b.Flush(at(1))
	if len(recs) != 1 {
		t.Fatalf("Flush = %d records", len(recs))
	}
	ids, _ := recs[0].Attr("tokenwatch.suppressed.auditIDs")
	count, _ := recs[0].Attr("tokenwatch.suppressed.count")
	if len(ids.Strings) != MaxAuditIDs || count.Int != MaxAuditIDs+50 {
		t.Errorf("auditIDs %d, count %d; want %d and %d", len(ids.Strings), count.Int, MaxAuditIDs, MaxAuditIDs+50)
	}
}

func TestLineageHeldBack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lineage []bool // per Admit after the first (admitted): a lineage record or not
		want    string
	}{
		{"token requests only", []bool{false, false},
			"Alert budget of 1 per 1m0s exceeded: 2 token request alerts held back (u=2)."},
		{"mixed", []bool{true, false, true},
			"Alert budget of 1 per 1m0s exceeded: 3 alerts (1 token request alerts, 2 lineage records) held back (u=3)."},
		{"lineage only", []bool{true},
			"Alert budget of 1 per 1m0s exceeded: 1 alerts (0 token request alerts, 1 lineage records) held back (u=1)."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New(Config{MaxAlerts: 1, Window: time.Minute})
			b.Admit(at(0), "u", "first")
			for i, l := range tc.lineage {
				admit := b.Admit
				if l {
					admit = b.AdmitLineage
				}
				if admit(at(0), "u", fmt.Sprint(i)) {
					t.Fatalf("record %d admitted over the budget", i)
				}
			}
			recs := b.Flush(at(1))
			if len(recs) != 1 || recs[0].Body != tc.want {
				t.Fatalf("Flush = %+v\nwant one record with body %q", recs, tc.want)
			}
		})
	}
}
