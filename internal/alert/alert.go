// Package alert is tokenwatch's record model: what the aggregator emits, in a
// form independent of OpenTelemetry so that the detection core stays pure and
// records can be stored in the outbox and exported later.
package alert

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Event names (the OTLP record's EventName).
const (
	EventTokenRequest = "tokenwatch.token_request"
	EventCorrelation  = "tokenwatch.correlation"
	EventPipeline     = "tokenwatch.pipeline"
)

// PipelineID is the ID of a pipeline record named by key: the same key, the
// same ID, so that a record made again (after a restart, say) is
// deduplicated.
func PipelineID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "ps-" + hex.EncodeToString(sum[:16])
}

// Severity is the seed rule's vocabulary with its OpenTelemetry number.
type Severity struct {
	Text   string `json:"text"`
	Number int    `json:"number"`
}

// Severities used by tokenwatch.
var (
	Low    = Severity{Text: "low", Number: 9}     // INFO
	Medium = Severity{Text: "medium", Number: 13} // WARN
	High   = Severity{Text: "high", Number: 17}   // ERROR
)

// Kind is the type of an attribute value.
type Kind string

// Attribute value kinds.
const (
	KindString  Kind = "string"
	KindInt     Kind = "int"
	KindBool    Kind = "bool"
	KindStrings Kind = "strings"
)

// Value is an attribute value: exactly one of the fields is meaningful, as
// Kind says.
type Value struct {
	Kind    Kind     `json:"k"`
	Str     string   `json:"s,omitempty"`
	Int     int64    `json:"i,omitempty"`
	Bool    bool     `json:"b,omitempty"`
	Strings []string `json:"a,omitempty"`
}

// Attr is one record attribute.
type Attr struct {
	Key   string `json:"key"`
	Value Value  `json:"value"`
}

// String returns a string attribute.
func String(k, v string) Attr { return Attr{Key: k, Value: Value{Kind: KindString, Str: v}} }

// Int returns an integer attribute.
func Int(k string, v int64) Attr { return Attr{Key: k, Value: Value{Kind: KindInt, Int: v}} }

// Bool returns a boolean attribute.
func Bool(k string, v bool) Attr { return Attr{Key: k, Value: Value{Kind: KindBool, Bool: v}} }

// Strings returns a string-array attribute. A nil slice is kept as an empty array.
func Strings(k string, v []string) Attr {
	if v == nil {
		v = []string{}
	}
	return Attr{Key: k, Value: Value{Kind: KindStrings, Strings: v}}
}

// Record is one alert: it becomes exactly one OTLP log record.
type Record struct {
	// ID is unique per record and stable across retries (the outbox key).
	ID        string    `json:"id"`
	EventName string    `json:"event_name"`
	Time      time.Time `json:"time"`
	Severity  Severity  `json:"severity"`
	Body      string    `json:"body"`
	Attrs     []Attr    `json:"attrs"`
}

// Attr returns the attribute named key, if present.
func (r *Record) Attr(key string) (Value, bool) {
	for _, a := range r.Attrs {
		if a.Key == key {
			return a.Value, true
		}
	}
	return Value{}, false
}
