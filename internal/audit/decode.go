package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Decode decodes one audit log line: a JSON object holding an
// audit.k8s.io/v1 Event. Surrounding whitespace (and a trailing newline) is
// allowed; anything else that is not exactly one JSON object is an error.
//
// Object keys match exactly and case-sensitively, as kube-apiserver writes
// them and as Kubernetes' own decoder reads them: "Verb" is not "verb". When
// a key repeats, the last one wins. Formatting (spacing, key order, \u
// escapes) does not change the result.
//
// responseObject, which holds the minted token at the RequestResponse level,
// is never decoded. requestObject is decoded only for token creates
// (IsTokenCreate), where it is a TokenRequest.
func Decode(line []byte) (*Event, error) {
	line = bytes.Trim(line, jsonSpace)
	if len(line) == 0 {
		return nil, errors.New("decode audit event: empty line")
	}
	if line[0] != '{' {
		// No excerpt of the line: a torn line may start inside a token.
		return nil, errors.New("decode audit event: not a JSON object")
	}
	// Fast path: JSON v2 into a struct, one pass. Its defaults are the
	// exact decoder's rules or stricter: names match case-sensitively, a
	// name twice in one object is an error, and so is invalid UTF-8 or a
	// value of the wrong type. On any error the exact decoder decides: it
	// takes the last of duplicates, replaces invalid UTF-8 and leaves a
	// wrong-typed field absent, as encoding/json does.
	if e, ok := decodeFast(line); ok {
		return e, nil
	}
	return decodeExact(line)
}

// jsonSpace is JSON's whitespace (RFC 8259), nothing more.
const jsonSpace = " \t\r\n"

// decodeExact decodes line level by level through maps, so keys match
// exactly and the last of duplicate keys wins, whole.
func decodeExact(line []byte) (*Event, error) {
	top, err := object(line)
	if err != nil {
		return nil, fmt.Errorf("decode audit event: %w", err)
	}
	e, err := decodeEvent(top)
	if err != nil {
		return nil, fmt.Errorf("decode audit event: %w", err)
	}
	return e, nil
}

// fastEvent is Event with requestObject kept raw: it is decoded only for
// token creates.
type fastEvent struct {
	Level                    string            `json:"level"`
	AuditID                  string            `json:"auditID"`
	Stage                    string            `json:"stage"`
	RequestURI               string            `json:"requestURI"`
	Verb                     string            `json:"verb"`
	User                     *UserInfo         `json:"user"`
	ImpersonatedUser         *UserInfo         `json:"impersonatedUser"`
	SourceIPs                []string          `json:"sourceIPs"`
	UserAgent                string            `json:"userAgent"`
	ObjectRef                *ObjectReference  `json:"objectRef"`
	ResponseStatus           *Status           `json:"responseStatus"`
	RequestObject            jsontext.Value    `json:"requestObject"`
	RequestReceivedTimestamp string            `json:"requestReceivedTimestamp"`
	StageTimestamp           string            `json:"stageTimestamp"`
	Annotations              map[string]string `json:"annotations"`
}

// decodeFast decodes line in one pass with JSON v2's default rules; false
// when they reject it (see Decode).
func decodeFast(line []byte) (*Event, bool) {
	var f fastEvent
	if err := jsonv2.Unmarshal(line, &f); err != nil {
		return nil, false
	}
	e := &Event{
		Level: f.Level, AuditID: f.AuditID, Stage: f.Stage, RequestURI: f.RequestURI, Verb: f.Verb,
		User: f.User, ImpersonatedUser: f.ImpersonatedUser, SourceIPs: f.SourceIPs, UserAgent: f.UserAgent,
		ObjectRef: f.ObjectRef, ResponseStatus: f.ResponseStatus,
		RequestReceivedTimestamp: f.RequestReceivedTimestamp, StageTimestamp: f.StageTimestamp,
		Annotations: f.Annotations,
	}
	if e.IsTokenCreate() && len(f.RequestObject) > 0 && !bytes.Equal(f.RequestObject, []byte("null")) {
		tr := &TokenRequest{}
		if err := jsonv2.Unmarshal(f.RequestObject, tr); err != nil {
			return nil, false
		}
		e.RequestObject = tr
	}
	return e, true
}

type fields map[string]json.RawMessage

// object decodes raw as a JSON object (nil for null) with exact keys.
func object(raw json.RawMessage) (fields, error) {
	var f fields
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, err
	}
	return f, nil
}

// decoder decodes the fields of an event one by one. A field whose value
// has the wrong JSON type (a string where a number is expected, an object
// where an array is, anywhere inside it) is left absent and its dotted path
// recorded: one odd field must not hide the event.
type decoder struct{ malformed []string }

func (d *decoder) bad(path string) { d.malformed = append(d.malformed, path) }

// val decodes f[key] into *dst when present; *dst keeps its zero value for
// an absent key, null, or a value of the wrong type (recorded as path).
func val[T any](d *decoder, f fields, key, path string, dst *T) {
	raw, ok := f[key]
	if !ok {
		return
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		d.bad(path)
		return
	}
	*dst = v
}

// obj returns f[key] as an object and true; nil and false when absent,
// null, or not an object (recorded as path).
func (d *decoder) obj(f fields, key, path string) (fields, bool) {
	raw, ok := f[key]
	if !ok {
		return nil, false
	}
	o, err := object(raw)
	if err != nil {
		d.bad(path)
		return nil, false
	}
	return o, o != nil
}

func decodeEvent(top fields) (*Event, error) {
	var d decoder
	e := &Event{}
	val(&d, top, "level", "level", &e.Level)
	val(&d, top, "auditID", "auditID", &e.AuditID)
	val(&d, top, "stage", "stage", &e.Stage)
	val(&d, top, "requestURI", "requestURI", &e.RequestURI)
	val(&d, top, "verb", "verb", &e.Verb)
	e.User = d.user(top, "user")
	e.ImpersonatedUser = d.user(top, "impersonatedUser")
	val(&d, top, "sourceIPs", "sourceIPs", &e.SourceIPs)
	val(&d, top, "userAgent", "userAgent", &e.UserAgent)
	if o, ok := d.obj(top, "objectRef", "objectRef"); ok {
		r := &ObjectReference{}
		val(&d, o, "resource", "objectRef.resource", &r.Resource)
		val(&d, o, "namespace", "objectRef.namespace", &r.Namespace)
		val(&d, o, "name", "objectRef.name", &r.Name)
		val(&d, o, "uid", "objectRef.uid", &r.UID)
		val(&d, o, "apiGroup", "objectRef.apiGroup", &r.APIGroup)
		val(&d, o, "apiVersion", "objectRef.apiVersion", &r.APIVersion)
		val(&d, o, "subresource", "objectRef.subresource", &r.Subresource)
		e.ObjectRef = r
	}
	if o, ok := d.obj(top, "responseStatus", "responseStatus"); ok {
		s := &Status{}
		val(&d, o, "status", "responseStatus.status", &s.Status)
		val(&d, o, "message", "responseStatus.message", &s.Message)
		val(&d, o, "reason", "responseStatus.reason", &s.Reason)
		val(&d, o, "code", "responseStatus.code", &s.Code)
		e.ResponseStatus = s
	}
	val(&d, top, "requestReceivedTimestamp", "requestReceivedTimestamp", &e.RequestReceivedTimestamp)
	val(&d, top, "stageTimestamp", "stageTimestamp", &e.StageTimestamp)
	val(&d, top, "annotations", "annotations", &e.Annotations)
	if e.IsTokenCreate() {
		e.RequestObject = d.tokenRequest(top)
	}
	e.Malformed = d.malformed
	return e, nil
}

// tokenRequest decodes requestObject as a TokenRequest, nil when absent.
func (d *decoder) tokenRequest(top fields) *TokenRequest {
	o, ok := d.obj(top, "requestObject", "requestObject")
	if !ok {
		return nil
	}
	tr := &TokenRequest{}
	if s, ok := d.obj(o, "spec", "requestObject.spec"); ok {
		val(d, s, "audiences", "requestObject.spec.audiences", &tr.Spec.Audiences)
		val(d, s, "expirationSeconds", "requestObject.spec.expirationSeconds", &tr.Spec.ExpirationSeconds)
		if b, ok := d.obj(s, "boundObjectRef", "requestObject.spec.boundObjectRef"); ok {
			r := &BoundObjectReference{}
			val(d, b, "kind", "requestObject.spec.boundObjectRef.kind", &r.Kind)
			val(d, b, "apiVersion", "requestObject.spec.boundObjectRef.apiVersion", &r.APIVersion)
			val(d, b, "name", "requestObject.spec.boundObjectRef.name", &r.Name)
			val(d, b, "uid", "requestObject.spec.boundObjectRef.uid", &r.UID)
			tr.Spec.BoundObjectRef = r
		}
	}
	return tr
}

func (d *decoder) user(top fields, key string) *UserInfo {
	o, ok := d.obj(top, key, key)
	if !ok {
		return nil
	}
	u := &UserInfo{}
	val(d, o, "username", key+".username", &u.Username)
	val(d, o, "uid", key+".uid", &u.UID)
	val(d, o, "groups", key+".groups", &u.Groups)
	val(d, o, "extra", key+".extra", &u.Extra)
	return u
}
