package silence

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// TestRotationRecords: a node whose audit log rotates below the largest
// token request event is reported once per size, at most once per
// silence.after; unknown sizes change nothing; a safe size re-arms.
func TestRotationRecords(t *testing.T) {
	const mb = 1 << 20
	type rec struct {
		Node string
		Size int64
	}
	type beat struct {
		node string
		size int64
	}
	tests := []struct {
		name  string
		beats [][]beat // per minute
		want  [][]rec
	}{
		{"never known", [][]beat{{{"n1", 0}}, {{"n1", 0}}}, [][]rec{nil, nil}},
		{"safe", [][]beat{{{"n1", 100 * mb}}, {{"n1", 19 * mb}}}, [][]rec{nil, nil}},
		{"small, repeated, then unknown: once", [][]beat{{{"n1", mb}}, {{"n1", mb}}, {{"n1", 0}}, {{"n1", mb}}},
			[][]rec{{{"n1", mb}}, nil, nil, nil}},
		{"just below the bound", [][]beat{{{"n1", 18 * mb}}}, [][]rec{{{"n1", 18 * mb}}}},
		{"another small size: after silence.after", [][]beat{{{"n1", mb}}, {{"n1", 2 * mb}}, {{"n1", 2 * mb}}, {{"n1", 2 * mb}}, {{"n1", 2 * mb}}, {{"n1", 2 * mb}}},
			[][]rec{{{"n1", mb}}, nil, nil, nil, nil, {{"n1", 2 * mb}}}},
		{"fixed, then small again: reported again", [][]beat{{{"n1", mb}}, {{"n1", 100 * mb}}, {{"n1", 100 * mb}}, {{"n1", 100 * mb}}, {{"n1", 100 * mb}}, {{"n1", 100 * mb}}, {{"n1", mb}}},
			[][]rec{{{"n1", mb}}, nil, nil, nil, nil, nil, {{"n1", mb}}}},
		{"each node has its own", [][]beat{{{"n1", mb}, {"n2", 100 * mb}}, {{"n1", mb}, {"n2", 3 * mb}}},
			[][]rec{{{"n1", mb}}, {{"n2", 3 * mb}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(Config{After: 5 * time.Minute})
			for m, beats := range tt.beats {
				for _, hb := range beats {
					tr.HeardBeat(at(float64(m)), "prod", hb.node, Beat{LastGrowth: agentClock(float64(m)), File: FilePresent, RotationBytes: hb.size})
				}
				var got []rec
				for _, r := range tr.Check(at(float64(m))) {
					if k, _ := r.Attr("tokenwatch.pipeline.kind"); k.Str != KindAuditLogRotationSmall {
						continue
					}
					n, _ := r.Attr("k8s.node.name")
					size, _ := r.Attr("tokenwatch.audit_log.rotation_bytes")
					got = append(got, rec{n.Str, size.Int})
					if !strings.Contains(r.Body, "--audit-log-maxsize=") || r.Severity.Text != "high" {
						t.Errorf("record: %s %q", r.Severity.Text, r.Body)
					}
				}
				if diff := cmp.Diff(tt.want[m], got); diff != "" {
					t.Errorf("minute %d (-want +got):\n%s", m, diff)
				}
			}
		})
	}
	if audit.LargestTokenEvent != 19*mb {
		t.Errorf("LargestTokenEvent = %d: the tests above assume 19 MiB", audit.LargestTokenEvent)
	}
}
