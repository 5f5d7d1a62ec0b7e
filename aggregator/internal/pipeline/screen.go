package pipeline

import (
	"github.com/tokenwatch/tokenwatch/internal/audit"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// Verdicts of Screen.
const (
	// Keep: the event may alert; convert it and pass it to Process.
	Keep = iota
	// DropExcluded: a token create whose user the exclusions drop.
	DropExcluded
	// DropNotMatched: not a token create by a named user.
	DropNotMatched
)

// Screen judges a wire event by the only fields the rule reads (verb,
// objectRef, user.username and groups) without converting it, so that the
// bulk of a batch, system identities the exclusions drop, is never copied
// into an audit.Event. Events it drops are counted by Process through
// Batch.Excluded and Batch.NotMatched; those it keeps are judged again by
// Process with the rule in force then (a reload in between only moves the
// event to the other side of the reload, as if it had arrived earlier).
func (p *Pipeline) Screen(e *tokenwatchv1.TokenEvent) int {
	if e == nil {
		return DropNotMatched
	}
	f := Fields{Verb: e.GetVerb()}
	if r := e.GetObjectRef(); r != nil {
		f.HasObjectRef = true
		f.Resource, f.Subresource, f.Namespace, f.Name = r.GetResource(), r.GetSubresource(), r.GetNamespace(), r.GetName()
	}
	if u := e.GetUser(); u != nil {
		f.HasUser = true
		f.Username, f.Groups = u.GetUsername(), u.GetGroups()
	}
	return p.ScreenFields(&f)
}

// Fields are the fields of a token event the rule reads, filled from any
// form of the event (the wire codec fills them from the encoded bytes).
type Fields struct {
	Verb                                   string
	HasObjectRef                           bool
	Resource, Subresource, Namespace, Name string
	HasUser                                bool
	Username                               string
	Groups                                 []string
}

// ScreenFields is Screen over the fields the rule reads. It does not retain
// f or its strings.
func (p *Pipeline) ScreenFields(f *Fields) int {
	ev := audit.Event{Verb: f.Verb}
	var ref audit.ObjectReference
	if f.HasObjectRef {
		ref = audit.ObjectReference{Resource: f.Resource, Subresource: f.Subresource, Namespace: f.Namespace, Name: f.Name}
		ev.ObjectRef = &ref
	}
	var user audit.UserInfo
	if f.HasUser {
		user = audit.UserInfo{Username: f.Username, Groups: f.Groups}
		ev.User = &user
	}
	v := p.rule.Load().Evaluate(&ev)
	switch {
	case v.Alerts():
		return Keep
	case v.Excluded:
		return DropExcluded
	default:
		return DropNotMatched
	}
}
