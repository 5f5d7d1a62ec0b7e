package wire

import (
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// KindToProto returns the wire form of k, LINEAGE_KIND_UNSPECIFIED for a
// kind the wire does not know.
func KindToProto(k lineage.Kind) tokenwatchv1.LineageKind {
	switch k {
	case lineage.KindToken:
		return tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN
	case lineage.KindActorUser:
		return tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER
	case lineage.KindActorCredential:
		return tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL
	case lineage.KindLegacy:
		return tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN
	}
	return tokenwatchv1.LineageKind_LINEAGE_KIND_UNSPECIFIED
}

// KindFromProto returns the kind k names; ok is false for
// LINEAGE_KIND_UNSPECIFIED and values this build does not know.
func KindFromProto(k tokenwatchv1.LineageKind) (kind lineage.Kind, ok bool) {
	switch k {
	case tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN:
		return lineage.KindToken, true
	case tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER:
		return lineage.KindActorUser, true
	case tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL:
		return lineage.KindActorCredential, true
	case tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN:
		return lineage.KindLegacy, true
	}
	return "", false
}

// WatchToProto returns the wire form of w. A zero From or Until is left
// unset.
func WatchToProto(w lineage.Watch) *tokenwatchv1.Watch {
	return &tokenwatchv1.Watch{Kind: KindToProto(w.Kind), Key: w.Key, From: timestamp(w.From), Until: timestamp(w.Until)}
}

// WatchFromProto converts a wire watch back; ok is false when its kind is
// unknown or names no watch (LINEAGE_KIND_LEGACY_TOKEN) or its key is empty.
func WatchFromProto(p *tokenwatchv1.Watch) (w lineage.Watch, ok bool) {
	k, ok := KindFromProto(p.GetKind())
	if !ok || k == lineage.KindLegacy || p.GetKey() == "" {
		return lineage.Watch{}, false
	}
	return lineage.Watch{Kind: k, Key: p.GetKey(), From: timeOf(p.GetFrom()), Until: timeOf(p.GetUntil())}, true
}

// UseFromProto converts a lineage event: the request (as FromProto), the
// kinds it matched (unknown ones left out, each kind once, in order) and
// whether the agent read it before the watch reached it. ok is false when
// p carries no event.
func UseFromProto(p *tokenwatchv1.LineageEvent) (e *audit.Event, kinds []lineage.Kind, lookback bool, ok bool) {
	if p.GetEvent() == nil {
		return nil, nil, false, false
	}
	for _, m := range p.GetMatched() {
		if k, known := KindFromProto(m); known && !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	return FromProto(p.GetEvent()), kinds, p.GetLookback(), true
}

// UseToProto is UseFromProto's inverse.
func UseToProto(e *audit.Event, kinds []lineage.Kind, lookback bool) *tokenwatchv1.LineageEvent {
	p := &tokenwatchv1.LineageEvent{Event: ToProto(e), Lookback: lookback}
	for _, k := range kinds {
		p.Matched = append(p.Matched, KindToProto(k))
	}
	return p
}

// CountFromProto converts a use count; ok is false when its kind is not
// LINEAGE_KIND_TOKEN or LINEAGE_KIND_LEGACY_TOKEN or its key is empty.
// Entries of Verbs and Codes under one key are added up.
func CountFromProto(p *tokenwatchv1.UseCount) (c lineage.Count, ok bool) {
	k, ok := KindFromProto(p.GetKind())
	if !ok || (k != lineage.KindToken && k != lineage.KindLegacy) || p.GetKey() == "" {
		return lineage.Count{}, false
	}
	return lineage.Count{
		Kind: k, Key: p.GetKey(), Uses: p.GetUses(),
		Verbs: keyCounts(p.GetVerbs()), SourceIPs: p.GetSourceIps(), Codes: keyCounts(p.GetCodes()),
		First: timeOf(p.GetFirst()), Last: timeOf(p.GetLast()), User: p.GetUser(),
	}, true
}

// CountToProto returns the wire form of c, its Verbs and Codes in key
// order.
func CountToProto(c lineage.Count) *tokenwatchv1.UseCount {
	return &tokenwatchv1.UseCount{
		Kind: KindToProto(c.Kind), Key: c.Key, Uses: c.Uses,
		Verbs: keyCountsToProto(c.Verbs), SourceIps: c.SourceIPs, Codes: keyCountsToProto(c.Codes),
		First: timestamp(c.First), Last: timestamp(c.Last), User: c.User,
	}
}

func keyCounts(p []*tokenwatchv1.KeyCount) map[string]uint64 {
	if len(p) == 0 {
		return nil
	}
	m := make(map[string]uint64, len(p))
	for _, kc := range p {
		m[kc.GetKey()] += kc.GetCount()
	}
	return m
}

func keyCountsToProto(m map[string]uint64) []*tokenwatchv1.KeyCount {
	var p []*tokenwatchv1.KeyCount
	for _, k := range slices.Sorted(maps.Keys(m)) {
		p = append(p, &tokenwatchv1.KeyCount{Key: k, Count: m[k]})
	}
	return p
}

// timestamp is t on the wire, nil for the zero time.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// timeOf is a wire timestamp as a time in UTC, the zero time when unset.
func timeOf(p *timestamppb.Timestamp) time.Time {
	if p == nil {
		return time.Time{}
	}
	return p.AsTime()
}
