package alert

import (
	"slices"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Bounds of one record. Most of what a token_request record says comes from
// the audit event, which the audited client controls in large part: the
// apiserver logs an Audit-ID header of any length, a request body of up to
// 3 MiB (spec.audiences), user extra, annotations. The agent bounds events
// already (audit.Bound); these bounds hold for every record whatever its
// source. A record within them stores and exports whatever the event held;
// beyond them Bounded cuts, never drops the record, and says what it cut.
const (
	// MaxValueBytes bounds one string value, or one element of a string
	// array: the agent's bound of an event's string fields.
	MaxValueBytes = 16 << 10
	// MaxArrayItems bounds the elements of one string array.
	MaxArrayItems = 64
	// MaxKeyBytes bounds an attribute key (annotation and user extra keys
	// become keys).
	MaxKeyBytes = 256
	// MaxAttrs bounds the attributes of a record; later ones are dropped
	// and counted in AttrDropped.
	MaxAttrs = 128
	// MaxBodyBytes bounds the body.
	MaxBodyBytes = 16 << 10
	// MaxRecordBytes is the budget of keys and values of a record: once it
	// is spent, each further value keeps minValueBytes.
	MaxRecordBytes = 256 << 10
	minValueBytes  = 256
	// maxTruncatedItems bounds AttrTruncated: every attribute and the body.
	maxTruncatedItems = MaxAttrs + 1
)

// Attributes that tell what Bounded cut.
const (
	// AttrTruncated lists the keys of the attributes whose value (or key)
	// was cut to a prefix, and "body" for the body.
	AttrTruncated = "tokenwatch.truncated"
	// AttrDropped counts the attributes dropped beyond MaxAttrs.
	AttrDropped = "tokenwatch.truncated.attributes_dropped"
)

// Bounded returns r within the bounds above, and whether it changed
// anything. Strings are cut as the agent cuts them (see cut), arrays to
// their first elements, attributes beyond MaxAttrs dropped; what was cut is
// listed in AttrTruncated (merged with a list r already has) and
// AttrDropped. The attributes come first in the order given, so the ones
// that identify the actor and the target, which records put first, keep
// the most. r's slices are not modified: a changed record has new ones.
// Bounded is idempotent.
func Bounded(r Record) (Record, bool) {
	var (
		out       []Attr // nil while nothing changed
		truncated []string
		prevTrunc []string
		dropped   int64
		kept      int
	)
	budget := MaxRecordBytes
	body := audit.Cut(r.Body, MaxBodyBytes)
	if len(body) != len(r.Body) {
		truncated = append(truncated, "body")
	}
	budget -= len(body)
	for i, a := range r.Attrs {
		switch a.Key {
		case AttrTruncated:
			prevTrunc = a.Value.Strings
			if out == nil {
				out = slices.Clone(r.Attrs[:i])
			}
			continue
		case AttrDropped:
			dropped += a.Value.Int
			if out == nil {
				out = slices.Clone(r.Attrs[:i])
			}
			continue
		}
		if kept >= MaxAttrs {
			dropped++
			if out == nil {
				out = slices.Clone(r.Attrs[:i])
			}
			continue
		}
		kept++
		b, cutAny := boundAttr(a, &budget)
		if cutAny {
			truncated = append(truncated, b.Key)
			if out == nil {
				out = slices.Clone(r.Attrs[:i])
			}
		}
		if out != nil {
			out = append(out, b)
		}
	}
	if out == nil && len(truncated) == 0 {
		return r, false
	}
	if out == nil {
		out = slices.Clone(r.Attrs)
	}
	if all := truncatedKeys(prevTrunc, truncated); len(all) > 0 {
		out = append(out, Strings(AttrTruncated, all))
	}
	if dropped > 0 {
		out = append(out, Int(AttrDropped, dropped))
	}
	changed := len(body) != len(r.Body) || !slices.EqualFunc(out, r.Attrs, equalAttr)
	r.Body, r.Attrs = body, out
	return r, changed
}

// truncatedKeys merges the keys a record said were truncated with those
// cut now: each cut to MaxKeyBytes, once, at most maxTruncatedItems.
func truncatedKeys(prev, now []string) []string {
	var all []string
	for _, k := range append(slices.Clone(prev), now...) {
		if k = audit.Cut(k, MaxKeyBytes); len(all) < maxTruncatedItems && !slices.Contains(all, k) {
			all = append(all, k)
		}
	}
	return all
}

// boundAttr cuts a's key and value within the remaining budget, which it
// spends, and reports whether it cut anything.
func boundAttr(a Attr, budget *int) (Attr, bool) {
	allow := func() int { return min(MaxValueBytes, max(*budget, minValueBytes)) }
	key := audit.Cut(a.Key, MaxKeyBytes)
	cutAny := len(key) != len(a.Key)
	*budget -= len(key)
	a.Key = key
	switch a.Value.Kind {
	case KindStrings:
		items := a.Value.Strings
		if len(items) > MaxArrayItems {
			items, cutAny = items[:MaxArrayItems], true
		}
		var bounded []string
		for j, s := range items {
			c := audit.Cut(s, allow())
			*budget -= len(c)
			if len(c) != len(s) && bounded == nil {
				bounded = slices.Clone(items[:j:j])
			}
			if bounded != nil {
				bounded = append(bounded, c)
			}
		}
		if bounded != nil {
			items, cutAny = bounded, true
		}
		a.Value.Strings = items
	case KindInt, KindBool:
		*budget -= 8
	default:
		c := audit.Cut(a.Value.Str, allow())
		*budget -= len(c)
		if len(c) != len(a.Value.Str) {
			a.Value.Str, cutAny = c, true
		}
	}
	return a, cutAny
}

func equalAttr(a, b Attr) bool {
	return a.Key == b.Key && a.Value.Kind == b.Value.Kind && a.Value.Str == b.Value.Str &&
		a.Value.Int == b.Value.Int && a.Value.Bool == b.Value.Bool && slices.Equal(a.Value.Strings, b.Value.Strings)
}
