package silence

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestFileStates: what an agent says of its audit log decides silence even
// while its heartbeats are regular (heard every minute here).
func TestFileStates(t *testing.T) {
	type beat struct {
		at     float64
		file   FileState
		growth float64 // agent-clock minute of last growth (-1: nothing read)
		want   []rec
	}
	tests := []struct {
		name  string
		beats []beat
	}{
		{"absent from the start, then present and read", []beat{
			{at: 0, file: FileMissing, growth: -1},
			{at: 4, file: FileMissing, growth: -1},
			{at: 5, file: FileMissing, growth: -1, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditData, 300}}},
			{at: 6, file: FileMissing, growth: -1}, // once per silence, no resumed
			{at: 7, file: FileMissing, growth: -1},
			{at: 8, file: FilePresent, growth: 8, want: []rec{{"cluster_resumed", "a", "n1", ReasonNoAuditData, 480}}},
			{at: 9, file: FilePresent, growth: 9},
		}},
		{"present but nothing read", []beat{
			{at: 0, file: FilePresent, growth: -1},
			{at: 5, file: FilePresent, growth: -1, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditGrowth, 300}}},
		}},
		{"read, then the file vanishes", []beat{
			{at: 0, file: FilePresent, growth: 0},
			{at: 1, file: FileMissing, growth: 0},
			// Nothing read since minute 0: silent for that first.
			{at: 5, file: FileMissing, growth: 0, want: []rec{{"cluster_silent", "a", "n1", ReasonNoAuditGrowth, 300}}},
			{at: 6, file: FileMissing, growth: 0},
		}},
		{"an old agent says nothing: as before", []beat{
			{at: 0, file: FileUnknown, growth: -1},
			{at: 9, file: FileUnknown, growth: -1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(Config{After: 5 * time.Minute})
			tr.Join(at(0), "a", "n1")
			next := 0
			for m := 0.0; m <= 10; m++ {
				if next < len(tt.beats) && tt.beats[next].at == m {
					b := tt.beats[next]
					g := time.Time{}
					if b.growth != -1 {
						g = agentClock(b.growth)
					}
					tr.HeardBeat(at(m), "a", "n1", Beat{LastGrowth: g, File: b.file, FileError: "open audit.log: no such file or directory"})
					if diff := cmp.Diff(b.want, short(tr.Check(at(m)))); diff != "" {
						t.Errorf("Check(%v) (-want +got):\n%s", m, diff)
					}
					next++
					continue
				}
				tr.Heard(at(m), "a", "n1", time.Time{}) // a heartbeat of an agent that says nothing
				if got := short(tr.Check(at(m))); len(got) > 0 {
					t.Errorf("Check(%v) = %v, want nothing", m, got)
				}
			}
		})
	}
}

func TestNoAuditDataBody(t *testing.T) {
	tr := New(Config{After: time.Minute})
	tr.HeardBeat(at(0), "a", "n1", Beat{File: FileMissing, FileError: "open /x/audit.log: " + strings.Repeat("x", 1000)})
	tr.Heard(at(1), "a", "n1", time.Time{})
	rs := tr.Check(at(1))
	if len(rs) != 1 {
		t.Fatalf("Check = %d records, want 1", len(rs))
	}
	if b := rs[0].Body; !strings.Contains(b, "absent or unreadable (open /x/audit.log: xxx") || len(b) > 500 {
		t.Errorf("body = %q", b)
	}
}

// TestAuditLogNotJSON: an agent whose audit log grows but is not JSON (a
// legacy-format log) makes its node silent with audit_log_not_json After
// from the first such heartbeat, however regular its heartbeats and its
// growth; a reconnection does not restart the wait; a JSON line ends it.
func TestAuditLogNotJSON(t *testing.T) {
	const legacy = "its lines are in the legacy text format"
	tr := New(Config{After: 5 * time.Minute})
	tr.Join(at(0), "a", "n1")
	beat := func(m float64, f Format) []rec {
		fault := ""
		if f == FormatNotJSON {
			fault = legacy
		}
		tr.HeardBeat(at(m), "a", "n1", Beat{LastGrowth: agentClock(m), File: FilePresent, Format: f, FormatErr: fault})
		return short(tr.Check(at(m)))
	}
	for m := 0.0; m < 5; m++ {
		if got := beat(m, FormatNotJSON); len(got) > 0 {
			t.Fatalf("minute %v: %v, want nothing yet", m, got)
		}
		if m == 3 {
			tr.Heard(at(m), "a", "n1", time.Time{}) // the agent reconnects
		}
	}
	want := []rec{{"cluster_silent", "a", "n1", ReasonAuditLogNotJSON, 300}}
	recs := tr.Check(at(5))
	if diff := cmp.Diff(want, short(recs)); diff != "" {
		t.Fatalf("minute 5 (-want +got):\n%s", diff)
	}
	if !strings.Contains(recs[0].Body, "its audit log grows but is not JSON: "+legacy) {
		t.Errorf("body = %q", recs[0].Body)
	}
	if got := beat(6, FormatNotJSON); len(got) > 0 {
		t.Errorf("minute 6: %v, want nothing (once per silence)", got)
	}
	want = []rec{{"cluster_resumed", "a", "n1", ReasonAuditLogNotJSON, 420}}
	if diff := cmp.Diff(want, beat(7, FormatJSON)); diff != "" {
		t.Errorf("minute 7 (-want +got):\n%s", diff)
	}
}
