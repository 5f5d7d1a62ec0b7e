package export

import (
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// TestRecordsAreBoundedOnExport: a record outboxed unbounded (by an
// aggregator before state schema 4) is exported within alert's bounds,
// saying what was cut.
func TestRecordsAreBoundedOnExport(t *testing.T) {
	r := alert.Record{ID: "tr-1", EventName: alert.EventTokenRequest, Time: time.Unix(1, 0), Severity: alert.Medium,
		Attrs: []alert.Attr{
			alert.String("user.name", "mallory"),
			alert.String("kubernetes.audit.auditID", strings.Repeat("a", 40004)),
		}}
	lr := protoRecord(&r, time.Unix(2, 0))
	got := map[string]int{}
	var cut []string
	for _, kv := range lr.Attributes {
		got[kv.Key] = len(kv.Value.GetStringValue())
		if kv.Key == alert.AttrTruncated {
			for _, v := range kv.Value.GetArrayValue().GetValues() {
				cut = append(cut, v.GetStringValue())
			}
		}
	}
	if got["kubernetes.audit.auditID"] > alert.MaxValueBytes || got["user.name"] != len("mallory") {
		t.Errorf("exported attribute sizes = %v, want auditID cut to %d and user.name whole", got, alert.MaxValueBytes)
	}
	if len(cut) != 1 || cut[0] != "kubernetes.audit.auditID" {
		t.Errorf("%s = %v, want [kubernetes.audit.auditID]", alert.AttrTruncated, cut)
	}
	if len(r.Attrs[1].Value.Str) != 40004 {
		t.Errorf("protoRecord modified the outbox record")
	}
	n := 0
	ar := apiRecord(&r, time.Unix(2, 0))
	ar.WalkAttributes(func(kv attribute.KeyValue) bool {
		if kv.Key == "kubernetes.audit.auditID" {
			n = len(kv.Value.AsString())
		}
		return true
	})
	if n == 0 || n > alert.MaxValueBytes {
		t.Errorf("API record auditID = %d bytes, want at most %d", n, alert.MaxValueBytes)
	}
}
