package export

import (
	"math"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/sdk/resource"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

// ServiceName is the resource's service.name.
const ServiceName = "tokenwatch-aggregator"

// ScopeName is the instrumentation scope of every record.
const ScopeName = "github.com/tokenwatch/tokenwatch/aggregator"

// newResource is the resource of every record: the OTEL_RESOURCE_ATTRIBUTES
// environment (as the SDK reads it) with service.name and service.version
// set by tokenwatch.
func newResource() *resource.Resource {
	ours := resource.NewSchemaless(
		attribute.String("service.name", ServiceName),
		attribute.String("service.version", version.Version),
	)
	res, err := resource.Merge(resource.Environment(), ours)
	if err != nil {
		return ours
	}
	return res
}

// attrs converts record attributes to OpenTelemetry attributes, typed.
func attrs(in []alert.Attr) []attribute.KeyValue {
	out := make([]attribute.KeyValue, 0, len(in))
	for _, a := range in {
		switch a.Value.Kind {
		case alert.KindString:
			out = append(out, attribute.String(a.Key, a.Value.Str))
		case alert.KindInt:
			out = append(out, attribute.Int64(a.Key, a.Value.Int))
		case alert.KindBool:
			out = append(out, attribute.Bool(a.Key, a.Value.Bool))
		case alert.KindStrings:
			out = append(out, attribute.StringSlice(a.Key, a.Value.Strings))
		default: // unknown kinds are kept as their string form
			out = append(out, attribute.String(a.Key, a.Value.Str))
		}
	}
	return out
}

// bounded is r within alert's bounds (alert.Bounded): the state store
// bounds what it stores, but records outboxed before its schema 4 were not.
// r itself is not modified.
func bounded(r *alert.Record) *alert.Record {
	if b, changed := alert.Bounded(*r); changed {
		return &b
	}
	return r
}

// apiRecord builds the logs API record for r.
func apiRecord(r *alert.Record, observed time.Time) log.Record {
	r = bounded(r)
	var lr log.Record
	ts, clamped := timestamp(r.Time)
	lr.SetEventName(r.EventName)
	lr.SetTimestamp(ts)
	lr.SetObservedTimestamp(observed)
	lr.SetSeverity(log.Severity(r.Severity.Number))
	lr.SetSeverityText(r.Severity.Text)
	lr.SetBody(attribute.StringValue(r.Body))
	lr.AddAttributes(attrs(r.Attrs)...)
	if clamped {
		lr.AddAttributes(attribute.Bool(AttrTimeClamped, true))
	}
	return lr
}

// protoValue converts an attribute value the way otlploggrpc does.
func protoValue(v attribute.Value) *commonpb.AnyValue {
	switch v.Type() {
	case attribute.BOOL:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}}
	case attribute.INT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v.AsInt64()}}
	case attribute.STRINGSLICE:
		ss := v.AsStringSlice()
		vals := make([]*commonpb.AnyValue, len(ss))
		for i, s := range ss {
			vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
		}
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}}
	default:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v.Emit()}}
	}
}

func protoKeyValues(kvs []attribute.KeyValue) []*commonpb.KeyValue {
	out := make([]*commonpb.KeyValue, len(kvs))
	for i, kv := range kvs {
		out[i] = &commonpb.KeyValue{Key: string(kv.Key), Value: protoValue(kv.Value)}
	}
	return out
}

func unixNano(t time.Time) uint64 {
	if t.IsZero() || t.Before(time.Unix(0, 0)) {
		return 0
	}
	return uint64(t.UnixNano())
}

// protoRecord builds the OTLP record for r, field for field what the SDK and
// otlploggrpc produce.
func protoRecord(r *alert.Record, observed time.Time) *logspb.LogRecord {
	r = bounded(r)
	ts, clamped := timestamp(r.Time)
	kvs := attrs(r.Attrs)
	if clamped {
		kvs = append(kvs, attribute.Bool(AttrTimeClamped, true))
	}
	return &logspb.LogRecord{
		TimeUnixNano:         unixNano(ts),
		ObservedTimeUnixNano: unixNano(observed),
		EventName:            r.EventName,
		SeverityNumber:       logspb.SeverityNumber(r.Severity.Number),
		SeverityText:         r.Severity.Text,
		Body:                 &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: r.Body}},
		Attributes:           protoKeyValues(kvs),
	}
}

// buildRequest is the OTLP export request for recs: one resource, one scope.
func buildRequest(res *resource.Resource, recs []alert.Record, observed time.Time) *collogspb.ExportLogsServiceRequest {
	lrs := make([]*logspb.LogRecord, len(recs))
	for i := range recs {
		lrs[i] = protoRecord(&recs[i], observed)
	}
	return &collogspb.ExportLogsServiceRequest{
		ResourceLogs: []*logspb.ResourceLogs{{
			Resource: &resourcepb.Resource{Attributes: protoKeyValues(res.Attributes())},
			ScopeLogs: []*logspb.ScopeLogs{{
				Scope:      &commonpb.InstrumentationScope{Name: ScopeName, Version: version.Version},
				LogRecords: lrs,
			}},
		}},
	}
}

// AttrTimeClamped marks a record whose time lay outside what an OTLP
// Timestamp can hold; its original time is in the record's own RFC 3339
// attribute (kubernetes.audit.requestReceivedTimestamp,
// tokenwatch.window.end).
const AttrTimeClamped = "tokenwatch.timestamp.clamped"

// The range of an OTLP Timestamp: nanoseconds since the Unix epoch in a
// uint64 where 0 means unknown, and in an int64 for Go and the SDK.
var (
	minTimestamp = time.Unix(0, 1)
	maxTimestamp = time.Unix(0, math.MaxInt64)
)

// timestamp returns t, or the nearest end of the range an OTLP Timestamp
// holds and true when t lies outside it (a zero time too): an event time
// comes from an audit log, and a forged or skewed one must not export as
// another time (year 1500 wrapped to 2084) or as no time at all.
func timestamp(t time.Time) (time.Time, bool) {
	switch {
	case t.Before(minTimestamp):
		return minTimestamp, true
	case t.After(maxTimestamp):
		return maxTimestamp, true
	}
	return t, false
}
