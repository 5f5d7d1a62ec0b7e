package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil, errors.New("decode audit event: empty line")
	}
	if line[0] != '{' {
		return nil, fmt.Errorf("decode audit event: not a JSON object (starts with %q)", truncate(line, 16))
	}
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

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
