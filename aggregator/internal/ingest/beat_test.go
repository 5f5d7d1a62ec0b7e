package ingest

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/silence"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// TestBeatOf: what a heartbeat says of the audit log, its format and the
// audit policy reaches the silence tracker; a heartbeat without a format
// error says the log is JSON (an older agent's too); the rotation size
// is kept within an int64.
func TestBeatOf(t *testing.T) {
	tests := []struct {
		name string
		hb   *tokenwatchv1.Heartbeat
		want silence.Beat
	}{
		{"an older agent's", &tokenwatchv1.Heartbeat{}, silence.Beat{Format: silence.FormatJSON}},
		{"absent file", &tokenwatchv1.Heartbeat{FileState: tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_ABSENT, FileError: "no such file"},
			silence.Beat{File: silence.FileMissing, FileError: "no such file", Format: silence.FormatJSON}},
		{"legacy format, policy with gaps", &tokenwatchv1.Heartbeat{
			FileState: tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_PRESENT, AuditLogFormatError: "legacy",
			AuditPolicySha256: "aaaa", AuditPolicyGaps: "rule 1 (level None) hides every token request"},
			silence.Beat{File: silence.FilePresent, Format: silence.FormatNotJSON, FormatErr: "legacy",
				Policy: silence.Policy{SHA256: "aaaa", Gaps: "rule 1 (level None) hides every token request"}}},
		{"rotation size", &tokenwatchv1.Heartbeat{AuditLogRotationBytes: 1 << 20},
			silence.Beat{Format: silence.FormatJSON, RotationBytes: 1 << 20}},
		{"a rotation size past int64", &tokenwatchv1.Heartbeat{AuditLogRotationBytes: math.MaxUint64},
			silence.Beat{Format: silence.FormatJSON, RotationBytes: math.MaxInt64}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, beatOf(tt.hb)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}
