package export

import (
	"bytes"
	"context"
	"math"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// TestTimestampAlwaysValid: whatever time a record carries (event times
// come from audit logs and can be forged or skewed), the exported Timestamp
// is a valid OTLP time, set and in range; one outside the range is clamped
// to its nearest end and marked, over OTLP/gRPC and in the JSON file format
// alike.
func TestTimestampAlwaysValid(t *testing.T) {
	tests := []struct {
		name        string
		give        time.Time
		want        uint64
		wantClamped bool
	}{
		{"in range", t0, uint64(t0.UnixNano()), false},
		{"2099", time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), uint64(time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()), false},
		{"first valid", time.Unix(0, 1), 1, false},
		{"last valid", time.Unix(0, math.MaxInt64), math.MaxInt64, false},
		{"epoch", time.Unix(0, 0), 1, true},
		{"1969", time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), 1, true},
		{"1500", time.Date(1500, 6, 1, 0, 0, 0, 0, time.UTC), 1, true},
		{"year 1", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), 1, true},
		{"zero", time.Time{}, 1, true},
		{"after 2262", time.Unix(0, math.MaxInt64).Add(time.Nanosecond), math.MaxInt64, true},
		{"9999", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), math.MaxInt64, true},
	}
	recs := make([]alert.Record, len(tests))
	for i, tt := range tests {
		recs[i] = sampleRecords()[0]
		recs[i].Time = tt.give
	}
	s, endpoint, _ := startSink(t, "127.0.0.1:0")
	if err := newTestOTLP(t, endpoint).Export(context.Background(), recs); err != nil {
		t.Fatalf("OTLP Export: %v", err)
	}
	var buf bytes.Buffer
	if err := newTestJSON(&buf).Export(context.Background(), recs); err != nil {
		t.Fatalf("JSON Export: %v", err)
	}
	var req collogspb.ExportLogsServiceRequest
	if err := protojson.Unmarshal(buf.Bytes(), &req); err != nil {
		t.Fatalf("JSON line: %v", err)
	}
	for _, got := range []struct {
		via  string
		recs []*logspb.LogRecord
	}{
		{"otlp", s.records()},
		{"json", req.ResourceLogs[0].ScopeLogs[0].LogRecords},
	} {
		if len(got.recs) != len(tests) {
			t.Fatalf("%s: %d records, want %d", got.via, len(got.recs), len(tests))
		}
		for i, tt := range tests {
			r := got.recs[i]
			if r.TimeUnixNano != tt.want {
				t.Errorf("%s %s: Timestamp = %d (%v), want %d", got.via, tt.name, r.TimeUnixNano,
					time.Unix(0, int64(r.TimeUnixNano)).UTC(), tt.want)
			}
			v := attr(r, AttrTimeClamped)
			switch {
			case tt.wantClamped && (v == nil || !v.GetBoolValue()):
				t.Errorf("%s %s: %s = %v, want true", got.via, tt.name, AttrTimeClamped, v)
			case !tt.wantClamped && v != nil:
				t.Errorf("%s %s: %s = %v, want absent", got.via, tt.name, AttrTimeClamped, v)
			}
		}
	}
}
