package detect

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// at returns e read at offset off of the file with fingerprint fp.
func at(e *audit.Event, file string, fp byte, off uint64) *audit.Event {
	e.Origin = &audit.Origin{File: file, Offset: off, Fingerprint: []byte{fp, 1, 2}, FingerprintLen: 1024}
	return e
}

func TestIncompleteKey(t *testing.T) {
	src := Source{Cluster: "c", Node: "cp-1"}
	base := at(ev("alice", "ResponseComplete", "", "", 201), "/var/log/audit.log", 7, 4096)
	tests := []struct {
		name string
		src  Source
		e    *audit.Event
		same bool
	}{
		{"same place, same event", src, at(ev("alice", "ResponseComplete", "", "", 201), "/var/log/audit.log", 7, 4096), true},
		{"same data renamed", src, at(ev("alice", "ResponseComplete", "", "", 201), "/var/log/audit-2026-12-01T00-00-00.000.log.gz", 7, 4096), true},
		{"next line", src, at(ev("alice", "ResponseComplete", "", "", 201), "/var/log/audit.log", 7, 5000), false},
		{"other file", src, at(ev("alice", "ResponseComplete", "", "", 201), "/var/log/audit.log", 8, 4096), false},
		{"other node", Source{Cluster: "c", Node: "cp-2"}, at(ev("alice", "ResponseComplete", "", "", 201), "/var/log/audit.log", 7, 4096), false},
		{"other event at the place", src, at(ev("bob", "ResponseComplete", "", "", 201), "/var/log/audit.log", 7, 4096), false},
		{"no timestamp", src, at(ev("alice", "ResponseComplete", "id-1", "", 201), "/var/log/audit.log", 7, 4096), false},
		{"no audit ID", src, at(ev("alice", "ResponseComplete", "", rrt1, 201), "/var/log/audit.log", 7, 4096), false},
	}
	k := KeyOf(src, base)
	for _, tt := range tests {
		got := KeyOf(tt.src, tt.e)
		if same := got.String() == k.String(); same != tt.same {
			t.Errorf("%s: KeyOf = %s, base %s: equal %v, want %v", tt.name, got, k, same, tt.same)
		}
	}
	// A complete event keeps the key it always had, whatever its origin.
	full := at(ev("alice", "ResponseComplete", "id", rrt1, 201), "/var/log/audit.log", 7, 4096)
	if got, want := KeyOf(src, full), (Key{"c", "id", rrt1, ""}); got != want {
		t.Errorf("KeyOf(complete) = %+v, want %+v", got, want)
	}
}

func TestDecideIncomplete(t *testing.T) {
	inc := ev("alice", audit.StageRequestReceived, "", "", 0)
	full := ev("alice", audit.StageRequestReceived, "id", rrt1, 0)
	tests := []struct {
		state State
		e     *audit.Event
		want  Action
	}{
		{StateNone, inc, ActionAlert},
		{StateDone, inc, ActionIgnore},
		{StateNone, full, ActionHold},
		{StateNone, ev("alice", audit.StageResponseComplete, "", rrt1, 201), ActionAlert},
	}
	for _, tt := range tests {
		if got := Decide(tt.state, tt.e); got != tt.want {
			t.Errorf("Decide(%v, %q/%q/%q) = %v, want %v", tt.state, tt.e.Stage, tt.e.AuditID, tt.e.RequestReceivedTimestamp, got, tt.want)
		}
	}
}

func TestIncompleteRecord(t *testing.T) {
	src := Source{Cluster: "c", Node: "cp-1"}
	a := TokenRecord(src, at(ev("alice", "ResponseComplete", "", "", 201), "audit.log", 7, 0), rule.Verdict{Match: true}, false)
	b := TokenRecord(src, at(ev("alice", "ResponseComplete", "", "", 201), "audit.log", 7, 900), rule.Verdict{Match: true}, false)
	if a.ID == b.ID {
		t.Errorf("two incomplete events at offsets 0 and 900 share record ID %s", a.ID)
	}
	for _, want := range []alert.Attr{alert.Bool("tokenwatch.incomplete_event", true), alert.String("log.file.name", "audit.log"), alert.Int("tokenwatch.file.offset", 900)} {
		if !hasAttr(b, want) {
			t.Errorf("record lacks %+v: %+v", want, b.Attrs)
		}
	}
	full := TokenRecord(src, ev("alice", "ResponseComplete", "id", rrt1, 201), rule.Verdict{Match: true}, false)
	if hasAttr(full, alert.Bool("tokenwatch.incomplete_event", true)) {
		t.Error("a complete event is marked incomplete")
	}
}

func hasAttr(r alert.Record, want alert.Attr) bool {
	for _, a := range r.Attrs {
		if a.Key == want.Key && cmp.Equal(a.Value, want.Value) {
			return true
		}
	}
	return false
}
