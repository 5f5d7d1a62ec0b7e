package linematch

import (
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
)

// Classify returns the lineage kinds e matches under the watches of s (nil:
// none): the exact decision, which Matcher.Block reproduces on raw lines.
//
//   - Token: the request's credential JTI (lineage.CredentialJTI) is watched
//     as a token.
//   - ActorUser: user.username is a followed minter and the request is a
//     sensitive action (lineage.Action).
//   - ActorCredential: the credential JTI is a followed credential and the
//     request is a sensitive action.
//   - Legacy: the request names a legacy token's service account
//     (lineage.LegacyServiceAccount); no watch is needed.
//
// A watched kind counts only when requestReceivedTimestamp lies within the
// watch's bounds; a timestamp that does not parse counts as within (the
// aggregator decides). Token creates are never lineage matches: they travel
// as token events.
func Classify(e *audit.Event, s *Set) Kind {
	if e == nil || e.IsTokenCreate() {
		return 0
	}
	var k Kind
	if lineage.LegacyServiceAccount(e) != "" {
		k |= Legacy
	}
	if s == nil || s.Len(Token|ActorUser|ActorCredential) == 0 {
		return k
	}
	return k | s.watched(e)
}

// watched returns the watched kinds e matches under s.
func (s *Set) watched(e *audit.Event) Kind {
	t, tok := eventTime(e)
	jti := ""
	if s.token.len() > 0 || s.cred.len() > 0 {
		jti = lineage.CredentialJTI(e.User)
	}
	var k, actor Kind
	if jti != "" {
		if b, ok := s.token.lookup(jti); ok && b.contains(t, tok) {
			k |= Token
		}
		if b, ok := s.cred.lookup(jti); ok && b.contains(t, tok) {
			actor |= ActorCredential
		}
	}
	if name := e.Username(); name != "" {
		if b, ok := s.users[name]; ok && b.contains(t, tok) {
			actor |= ActorUser
		}
	}
	if actor != 0 && lineage.Action(e) != "" {
		k |= actor
	}
	return k
}

// eventTime returns requestReceivedTimestamp in Unix nanoseconds, and false
// when it does not parse as RFC 3339.
func eventTime(e *audit.Event) (int64, bool) {
	t, err := time.Parse(time.RFC3339Nano, e.RequestReceivedTimestamp)
	if err != nil {
		return 0, false
	}
	return t.UnixNano(), true
}
