package auditpolicy

import (
	"fmt"
	"slices"
	"strings"
)

// Gap is a rule that keeps token requests out of the audit log: those
// matching all of its conditions (an empty list is no condition; all empty:
// every token request the rules before it leave).
type Gap struct {
	Rule       int // index in the policy's rules; -1: no rule matches, the level is None
	Level      string
	Users      []string
	Groups     []string
	Namespaces []string
	Names      []string // service-account names (resourceNames)
}

// Everyone reports whether the gap has no condition.
func (g Gap) Everyone() bool {
	return len(g.Users) == 0 && len(g.Groups) == 0 && len(g.Namespaces) == 0 && len(g.Names) == 0
}

// Gaps returns, in rule order, the rules that keep some token requests out
// of the audit log, down to the first rule that matches every token
// request (or the end of the rules, whose default is level None). It errs
// on the side of reporting: a rule that hides token requests by some user
// is listed even when an earlier rule logs some of them (one that logs
// that user's in one namespace, say). Nil when every token request is
// logged at a stage tokenwatch reads.
func (p *Policy) Gaps() []Gap {
	gaps, ended := p.rulesWhere(func(r *Rule) bool { return Hidden(r.Level, union(p.OmitStages, r.OmitStages)) })
	if ended {
		return gaps
	}
	return append(gaps, Gap{Rule: -1, Level: LevelNone})
}

// Leaks returns, in rule order, the rules that log some token requests at
// RequestResponse with their ResponseComplete stage: with the response,
// which holds the minted token, so every such token sits in clear text in
// the audit files. Like Gaps, it errs on the side of reporting. Nil when
// none does.
func (p *Policy) Leaks() []Gap {
	leaks, _ := p.rulesWhere(func(r *Rule) bool { return Leaked(r.Level, union(p.OmitStages, r.OmitStages)) })
	return leaks
}

// Leaked reports whether a token request given level and omit is logged
// with its response, the minted token.
func Leaked(level string, omit []string) bool {
	return level == LevelRequestResponse && !slices.Contains(omit, StageResponseComplete)
}

// rulesWhere returns the rules for which keep holds among those that match
// some token requests, down to the first that matches them all, each with
// its conditions, and whether there was such a rule (else the rest go to
// the default level, None).
func (p *Policy) rulesWhere(keep func(r *Rule) bool) (out []Gap, ended bool) {
	for i := range p.Rules {
		r := &p.Rules[i]
		g, ok := r.tokenGap()
		if !ok {
			continue
		}
		g.Rule = i
		if keep(r) {
			out = append(out, g)
		}
		if g.Everyone() {
			return out, true
		}
	}
	return out, false
}

// tokenGap returns the conditions under which the rule matches token
// requests, false when it matches none.
func (r *Rule) tokenGap() (Gap, bool) {
	g := Gap{Level: r.Level, Users: r.Users, Groups: r.UserGroups, Namespaces: r.Namespaces}
	if len(r.Verbs) > 0 && !slices.Contains(r.Verbs, "create") {
		return Gap{}, false
	}
	if len(r.Namespaces) == 0 && len(r.Resources) == 0 {
		return g, len(r.NonResourceURLs) == 0
	}
	if len(r.Resources) == 0 {
		return g, true
	}
	matched, anyName := false, false
	var names []string
	for _, gr := range r.Resources {
		switch {
		case gr.Group != "":
		case len(gr.Resources) == 0:
			matched, anyName = true, true
		case slices.ContainsFunc(gr.Resources, tokenResource):
			matched = true
			if len(gr.ResourceNames) == 0 {
				anyName = true
			}
			names = append(names, gr.ResourceNames...)
		}
	}
	if !anyName {
		g.Names = names
	}
	return g, matched
}

// String describes the gap in one phrase.
func (g Gap) String() string {
	var who []string
	if len(g.Users) > 0 {
		who = append(who, "by users "+strings.Join(g.Users, ", "))
	}
	if len(g.Groups) > 0 {
		who = append(who, "by groups "+strings.Join(g.Groups, ", "))
	}
	if len(g.Namespaces) > 0 {
		who = append(who, "in namespaces "+strings.Join(g.Namespaces, ", "))
	}
	if len(g.Names) > 0 {
		who = append(who, "for service accounts named "+strings.Join(g.Names, ", "))
	}
	what := "every token request"
	if len(who) > 0 {
		what = "token requests " + strings.Join(who, " ")
	}
	if g.Rule < 0 {
		return "token requests no rule matches are not logged (level None)"
	}
	if g.Level == LevelRequestResponse {
		return fmt.Sprintf("rule %d (level RequestResponse) writes the minted token of %s into the audit log", g.Rule+1, what)
	}
	how := "level " + g.Level
	if g.Level != LevelNone && g.Level != "" {
		how = "both stages omitted"
	}
	return fmt.Sprintf("rule %d (%s) hides %s", g.Rule+1, how, what)
}

// Describe is the gaps in one line ("" for none): each gap's phrase,
// separated by "; ".
func Describe(gaps []Gap) string {
	s := make([]string, len(gaps))
	for i, g := range gaps {
		s[i] = g.String()
	}
	return strings.Join(s, "; ")
}

// Covers reports whether r meets all of the gap's conditions.
func (g Gap) Covers(r Request) bool {
	return (len(g.Users) == 0 || slices.Contains(g.Users, r.User)) &&
		(len(g.Groups) == 0 || slices.ContainsFunc(r.Groups, func(x string) bool { return slices.Contains(g.Groups, x) })) &&
		(len(g.Namespaces) == 0 || slices.Contains(g.Namespaces, r.Namespace)) &&
		(len(g.Names) == 0 || slices.Contains(g.Names, r.Name))
}
