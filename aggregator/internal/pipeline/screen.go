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
	ev := audit.Event{Verb: e.GetVerb()}
	var ref audit.ObjectReference
	if r := e.GetObjectRef(); r != nil {
		ref = audit.ObjectReference{Resource: r.GetResource(), Subresource: r.GetSubresource(), Namespace: r.GetNamespace(), Name: r.GetName()}
		ev.ObjectRef = &ref
	}
	var user audit.UserInfo
	if u := e.GetUser(); u != nil {
		user = audit.UserInfo{Username: u.GetUsername(), Groups: u.GetGroups()}
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
