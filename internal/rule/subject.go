package rule

import "github.com/tokenwatch/tokenwatch/internal/audit"

// Subject is everything the rule reads of an event: the authenticated user
// and groups, the verb and the target. Each form an event takes (a decoded
// audit.Event, a wire message, its encoded bytes) fills it, so the rule is
// written once and judges any form without converting it.
type Subject struct {
	User   string // user.username; never impersonatedUser
	Groups []string
	Verb   string
	// Resource and Subresource are objectRef's; "" when it is absent.
	Resource, Subresource string
	// Namespace and Name are the target service account's.
	Namespace, Name string
}

// SubjectOf fills a Subject from e. It does not copy e's slices.
func SubjectOf(e *audit.Event) Subject {
	s := Subject{Verb: e.Verb}
	if r := e.ObjectRef; r != nil {
		s.Resource, s.Subresource, s.Namespace, s.Name = r.Resource, r.Subresource, r.Namespace, r.Name
	}
	if u := e.User; u != nil {
		s.User, s.Groups = u.Username, u.Groups
	}
	return s
}

// TokenCreate reports whether s is a create on serviceaccounts/token, the
// request the TokenRequest API serves (audit.Event.IsTokenCreate).
func (s *Subject) TokenCreate() bool {
	return s.Verb == "create" && s.Resource == "serviceaccounts" && s.Subresource == "token"
}
