package wire

import (
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// MaxBoundedBytes bounds the encoded size of any event once audit.Bound has
// cut it, with a Source whose file name is at most 4 KiB.
const MaxBoundedBytes = 1536 << 10

// ToProto converts e to its wire form. Source (the position in the agent's
// files) is e's Origin, when set; else it is left for the caller to set.
func ToProto(e *audit.Event) *tokenwatchv1.TokenEvent {
	p := &tokenwatchv1.TokenEvent{
		AuditId:                  e.AuditID,
		Stage:                    e.Stage,
		RequestReceivedTimestamp: e.RequestReceivedTimestamp,
		StageTimestamp:           e.StageTimestamp,
		Verb:                     e.Verb,
		RequestUri:               e.RequestURI,
		User:                     userToProto(e.User),
		ImpersonatedUser:         userToProto(e.ImpersonatedUser),
		SourceIps:                e.SourceIPs,
		UserAgent:                e.UserAgent,
		Annotations:              e.Annotations,
		Level:                    e.Level,
		Truncated:                e.Truncated,
		MalformedFields:          e.Malformed,
	}
	if r := e.ObjectRef; r != nil {
		p.ObjectRef = &tokenwatchv1.ObjectRef{
			Resource: r.Resource, Namespace: r.Namespace, Name: r.Name, ApiGroup: r.APIGroup,
			ApiVersion: r.APIVersion, Subresource: r.Subresource, Uid: r.UID,
		}
	}
	if o := e.Origin; o != nil {
		p.Source = &tokenwatchv1.SourcePosition{File: o.File, Offset: o.Offset, Fingerprint: o.Fingerprint, FingerprintLen: o.FingerprintLen}
	}
	if s := e.ResponseStatus; s != nil {
		p.ResponseStatus = &tokenwatchv1.ResponseStatus{Code: s.Code, Status: s.Status, Reason: s.Reason, Message: s.Message}
	}
	if ro := e.RequestObject; ro != nil {
		spec := &tokenwatchv1.TokenRequestSpec{Audiences: ro.Spec.Audiences}
		if ro.Spec.ExpirationSeconds != nil {
			spec.ExpirationSeconds, spec.HasExpirationSeconds = *ro.Spec.ExpirationSeconds, true
		}
		if b := ro.Spec.BoundObjectRef; b != nil {
			spec.BoundObjectRef = &tokenwatchv1.BoundObjectReference{Kind: b.Kind, ApiVersion: b.APIVersion, Name: b.Name, Uid: b.UID}
		}
		p.RequestSpec = spec
	}
	return p
}

func userToProto(u *audit.UserInfo) *tokenwatchv1.UserInfo {
	if u == nil {
		return nil
	}
	p := &tokenwatchv1.UserInfo{Present: true, Username: u.Username, Uid: u.UID, Groups: u.Groups}
	if len(u.Extra) > 0 {
		p.Extra = make(map[string]*tokenwatchv1.StringList, len(u.Extra))
		for k, v := range u.Extra {
			p.Extra[k] = &tokenwatchv1.StringList{Values: v}
		}
	}
	return p
}

// FromProto converts a wire event back; FromProto(ToProto(e)) equals e up to
// empty-versus-nil slices and maps. It copies nothing it does not know.
func FromProto(p *tokenwatchv1.TokenEvent) *audit.Event {
	e := &audit.Event{
		Level:                    p.GetLevel(),
		AuditID:                  p.GetAuditId(),
		Stage:                    p.GetStage(),
		RequestURI:               p.GetRequestUri(),
		Verb:                     p.GetVerb(),
		User:                     userFromProto(p.GetUser()),
		ImpersonatedUser:         userFromProto(p.GetImpersonatedUser()),
		SourceIPs:                p.GetSourceIps(),
		UserAgent:                p.GetUserAgent(),
		RequestReceivedTimestamp: p.GetRequestReceivedTimestamp(),
		StageTimestamp:           p.GetStageTimestamp(),
		Annotations:              p.GetAnnotations(),
		Truncated:                p.GetTruncated(),
		Malformed:                p.GetMalformedFields(),
	}
	if r := p.GetObjectRef(); r != nil {
		e.ObjectRef = &audit.ObjectReference{
			Resource: r.GetResource(), Namespace: r.GetNamespace(), Name: r.GetName(), UID: r.GetUid(),
			APIGroup: r.GetApiGroup(), APIVersion: r.GetApiVersion(), Subresource: r.GetSubresource(),
		}
	}
	if o := p.GetSource(); o != nil {
		e.Origin = &audit.Origin{File: o.GetFile(), Offset: o.GetOffset(), Fingerprint: o.GetFingerprint(), FingerprintLen: o.GetFingerprintLen()}
	}
	if s := p.GetResponseStatus(); s != nil {
		e.ResponseStatus = &audit.Status{Code: s.GetCode(), Status: s.GetStatus(), Reason: s.GetReason(), Message: s.GetMessage()}
	}
	if s := p.GetRequestSpec(); s != nil {
		tr := &audit.TokenRequest{Spec: audit.TokenRequestSpec{Audiences: s.GetAudiences()}}
		if s.GetHasExpirationSeconds() {
			v := s.GetExpirationSeconds()
			tr.Spec.ExpirationSeconds = &v
		}
		if b := s.GetBoundObjectRef(); b != nil {
			tr.Spec.BoundObjectRef = &audit.BoundObjectReference{Kind: b.GetKind(), APIVersion: b.GetApiVersion(), Name: b.GetName(), UID: b.GetUid()}
		}
		e.RequestObject = tr
	}
	return e
}

func userFromProto(p *tokenwatchv1.UserInfo) *audit.UserInfo {
	if p == nil {
		return nil
	}
	if !p.GetPresent() && p.GetUsername() == "" && p.GetUid() == "" && len(p.GetGroups()) == 0 && len(p.GetExtra()) == 0 {
		return nil // absent; a sender that forgot Present but sent a name still counts
	}
	u := &audit.UserInfo{Username: p.GetUsername(), UID: p.GetUid(), Groups: p.GetGroups()}
	if len(p.GetExtra()) > 0 {
		u.Extra = make(map[string][]string, len(p.GetExtra()))
		for k, v := range p.GetExtra() {
			u.Extra[k] = v.GetValues()
		}
	}
	return u
}

// Subject fills the rule's subject from a wire event without converting it.
// It does not copy p's slices.
func Subject(p *tokenwatchv1.TokenEvent) rule.Subject {
	s := rule.Subject{Verb: p.GetVerb()}
	if r := p.GetObjectRef(); r != nil {
		s.Resource, s.Subresource, s.Namespace, s.Name = r.GetResource(), r.GetSubresource(), r.GetNamespace(), r.GetName()
	}
	if u := p.GetUser(); u != nil {
		s.User, s.Groups = u.GetUsername(), u.GetGroups()
	}
	return s
}
