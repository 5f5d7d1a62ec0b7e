package pipeline

import (
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// TestLossRecordKinds: a loss of audit data is high audit_data_lost; a
// lookback block the agent could not read again (its token requests were
// checked when first read) is medium lineage_lookback_lost.
func TestLossRecordKinds(t *testing.T) {
	src := detect.Source{Cluster: "c1", Node: "cp-1"}
	now := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		reason   string
		kind     string
		severity alert.Severity
	}{
		{"rotated_file_gone", "audit_data_lost", alert.High},
		{"line_too_long", "audit_data_lost", alert.High},
		{ReasonLookbackUnavailable, KindLookbackLost, alert.Medium},
	} {
		r := LossRecord(src, Loss{Reason: tc.reason, File: "audit.log", BytesLost: 10, BytesKnown: true}, now)
		if k, _ := r.Attr("tokenwatch.pipeline.kind"); k.Str != tc.kind {
			t.Errorf("%s: kind = %q, want %q", tc.reason, k.Str, tc.kind)
		}
		if r.Severity != tc.severity {
			t.Errorf("%s: severity = %v, want %v", tc.reason, r.Severity, tc.severity)
		}
		if reason, _ := r.Attr("tokenwatch.loss.reason"); reason.Str != tc.reason {
			t.Errorf("%s: loss reason = %q", tc.reason, reason.Str)
		}
	}
}
