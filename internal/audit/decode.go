package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	// Fast path: encoding/json into a struct, one pass. It matches keys
	// case-insensitively and merges duplicate objects, so it is used only
	// when a scan of the keys shows neither can matter; otherwise (and on
	// any error) the exact decoder decides.
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
	RequestObject            json.RawMessage   `json:"requestObject"`
	RequestReceivedTimestamp string            `json:"requestReceivedTimestamp"`
	StageTimestamp           string            `json:"stageTimestamp"`
	Annotations              map[string]string `json:"annotations"`
}

func decodeFast(line []byte) (*Event, bool) {
	var f fastEvent
	if err := json.Unmarshal(line, &f); err != nil {
		return nil, false
	}
	if ambiguousKeys(line) {
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
		if err := json.Unmarshal(f.RequestObject, tr); err != nil {
			return nil, false
		}
		e.RequestObject = tr
	}
	return e, true
}

// fieldBits numbers the JSON names of every field Event decodes, at any
// level.
var fieldBits = func() map[string]uint64 {
	names := []string{
		"level", "auditID", "stage", "requestURI", "verb", "user", "impersonatedUser", "sourceIPs",
		"userAgent", "objectRef", "responseStatus", "requestObject", "requestReceivedTimestamp",
		"stageTimestamp", "annotations", "username", "uid", "groups", "extra", "resource",
		"namespace", "name", "apiGroup", "apiVersion", "subresource", "status", "message", "reason",
		"code", "spec", "audiences", "expirationSeconds", "boundObjectRef", "kind",
	}
	m := make(map[string]uint64, len(names))
	for i, n := range names {
		m[n] = 1 << i
	}
	return m
}()

// foldedFields holds the lower-case forms of fieldBits' names.
var foldedFields = func() map[string]bool {
	m := make(map[string]bool, len(fieldBits))
	for n := range fieldBits {
		m[strings.ToLower(n)] = true
	}
	return m
}()

const maxFieldLen = len("requestReceivedTimestamp")

// maxScanDepth bounds the nesting the key scan follows.
const maxScanDepth = 64

// ambiguousKeys reports whether line, valid JSON, has a key on which
// encoding/json's struct decoding could differ from exact decoding: a key
// equal to a field name only up to case, an escaped or non-ASCII key, a
// field name twice in one object, or nesting deeper than maxScanDepth.
func ambiguousKeys(line []byte) bool {
	var seen [maxScanDepth]uint64
	var lower [maxFieldLen]byte
	depth := -1
	for i := 0; i < len(line); i++ {
		switch line[i] {
		case '{', '[':
			depth++
			if depth >= maxScanDepth {
				return true
			}
			seen[depth] = 0
		case '}', ']':
			depth--
		case '"':
			j, plain := i+1, true
			for ; j < len(line) && line[j] != '"'; j++ {
				switch {
				case line[j] == '\\':
					plain = false
					j++
				case line[j] >= 0x80:
					plain = false
				}
			}
			k := j + 1
			for k < len(line) && (line[k] == ' ' || line[k] == '\t' || line[k] == '\n' || line[k] == '\r') {
				k++
			}
			if k < len(line) && line[k] == ':' && depth >= 0 {
				if !plain {
					return true
				}
				key := line[i+1 : j]
				if bit, ok := fieldBits[string(key)]; ok {
					if seen[depth]&bit != 0 {
						return true
					}
					seen[depth] |= bit
				} else if len(key) <= maxFieldLen {
					for n, c := range key {
						if 'A' <= c && c <= 'Z' {
							c += 'a' - 'A'
						}
						lower[n] = c
					}
					if foldedFields[string(lower[:len(key)])] {
						return true
					}
				}
			}
			i = j
		}
	}
	return false
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

// decoder collects the first error of a sequence of field decodes.
type decoder struct{ err error }

// val decodes f[key] into dst when present; dst keeps its zero value for an
// absent key or null.
func (d *decoder) val(f fields, key string, dst any) {
	raw, ok := f[key]
	if !ok || d.err != nil {
		return
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		d.err = fmt.Errorf("field %s: %w", key, err)
	}
}

// obj returns f[key] as an object, nil when absent or null.
func (d *decoder) obj(f fields, key string) fields {
	raw, ok := f[key]
	if !ok || d.err != nil {
		return nil
	}
	o, err := object(raw)
	if err != nil {
		d.err = fmt.Errorf("field %s: %w", key, err)
		return nil
	}
	return o
}

// present reports whether f[key] is an object (not absent, not null).
func present(f fields, key string) bool {
	raw, ok := f[key]
	return ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

func decodeEvent(top fields) (*Event, error) {
	var d decoder
	e := &Event{}
	d.val(top, "level", &e.Level)
	d.val(top, "auditID", &e.AuditID)
	d.val(top, "stage", &e.Stage)
	d.val(top, "requestURI", &e.RequestURI)
	d.val(top, "verb", &e.Verb)
	e.User = d.user(top, "user")
	e.ImpersonatedUser = d.user(top, "impersonatedUser")
	d.val(top, "sourceIPs", &e.SourceIPs)
	d.val(top, "userAgent", &e.UserAgent)
	if present(top, "objectRef") {
		o := d.obj(top, "objectRef")
		r := &ObjectReference{}
		d.val(o, "resource", &r.Resource)
		d.val(o, "namespace", &r.Namespace)
		d.val(o, "name", &r.Name)
		d.val(o, "uid", &r.UID)
		d.val(o, "apiGroup", &r.APIGroup)
		d.val(o, "apiVersion", &r.APIVersion)
		d.val(o, "subresource", &r.Subresource)
		e.ObjectRef = r
	}
	if present(top, "responseStatus") {
		o := d.obj(top, "responseStatus")
		s := &Status{}
		d.val(o, "status", &s.Status)
		d.val(o, "message", &s.Message)
		d.val(o, "reason", &s.Reason)
		d.val(o, "code", &s.Code)
		e.ResponseStatus = s
	}
	d.val(top, "requestReceivedTimestamp", &e.RequestReceivedTimestamp)
	d.val(top, "stageTimestamp", &e.StageTimestamp)
	d.val(top, "annotations", &e.Annotations)
	if d.err == nil && e.IsTokenCreate() && present(top, "requestObject") {
		o := d.obj(top, "requestObject")
		tr := &TokenRequest{}
		if present(o, "spec") {
			s := d.obj(o, "spec")
			d.val(s, "audiences", &tr.Spec.Audiences)
			d.val(s, "expirationSeconds", &tr.Spec.ExpirationSeconds)
			if present(s, "boundObjectRef") {
				b := d.obj(s, "boundObjectRef")
				r := &BoundObjectReference{}
				d.val(b, "kind", &r.Kind)
				d.val(b, "apiVersion", &r.APIVersion)
				d.val(b, "name", &r.Name)
				d.val(b, "uid", &r.UID)
				tr.Spec.BoundObjectRef = r
			}
		}
		if d.err != nil {
			d.err = fmt.Errorf("requestObject: %w", d.err)
		}
		e.RequestObject = tr
	}
	if d.err != nil {
		return nil, d.err
	}
	return e, nil
}

func (d *decoder) user(top fields, key string) *UserInfo {
	if !present(top, key) || d.err != nil {
		return nil
	}
	o := d.obj(top, key)
	u := &UserInfo{}
	d.val(o, "username", &u.Username)
	d.val(o, "uid", &u.UID)
	d.val(o, "groups", &u.Groups)
	d.val(o, "extra", &u.Extra)
	if d.err != nil {
		d.err = fmt.Errorf("%s: %w", key, d.err)
	}
	return u
}
