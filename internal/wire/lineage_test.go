package wire

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestKind(t *testing.T) {
	tests := []struct {
		kind lineage.Kind
		wire tokenwatchv1.LineageKind
	}{
		{lineage.KindToken, tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN},
		{lineage.KindActorUser, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER},
		{lineage.KindActorCredential, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL},
		{lineage.KindLegacy, tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN},
	}
	for _, tt := range tests {
		if got := KindToProto(tt.kind); got != tt.wire {
			t.Errorf("KindToProto(%q) = %v, want %v", tt.kind, got, tt.wire)
		}
		if got, ok := KindFromProto(tt.wire); !ok || got != tt.kind {
			t.Errorf("KindFromProto(%v) = %q, %v, want %q, true", tt.wire, got, ok, tt.kind)
		}
	}
	if got := KindToProto("other"); got != tokenwatchv1.LineageKind_LINEAGE_KIND_UNSPECIFIED {
		t.Errorf("KindToProto(other) = %v, want UNSPECIFIED", got)
	}
	for _, k := range []tokenwatchv1.LineageKind{tokenwatchv1.LineageKind_LINEAGE_KIND_UNSPECIFIED, 99} {
		if got, ok := KindFromProto(k); ok {
			t.Errorf("KindFromProto(%v) = %q, true, want false", k, got)
		}
	}
}

var (
	t0 = time.Date(2026, 11, 26, 23, 9, 13, 821930000, time.UTC)
	t1 = t0.Add(time.Hour)
)

func TestWatch(t *testing.T) {
	tests := []struct {
		name   string
		give   lineage.Watch
		want   *tokenwatchv1.Watch
		wantOK bool
	}{
		{"token", lineage.Watch{Kind: lineage.KindToken, Key: "j1", From: t0, Until: t1},
			&tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: "j1", From: timestamppb.New(t0), Until: timestamppb.New(t1)}, true},
		{"actor user", lineage.Watch{Kind: lineage.KindActorUser, Key: "alice", From: t0, Until: t1},
			&tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER, Key: "alice", From: timestamppb.New(t0), Until: timestamppb.New(t1)}, true},
		{"remove carries kind and key", lineage.Watch{Kind: lineage.KindActorCredential, Key: "j2"},
			&tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL, Key: "j2"}, true},
		{"legacy is no watch", lineage.Watch{Kind: lineage.KindLegacy, Key: "system:serviceaccount:a:b"},
			&tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN, Key: "system:serviceaccount:a:b"}, false},
		{"empty key", lineage.Watch{Kind: lineage.KindToken},
			&tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := WatchToProto(tt.give)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("WatchToProto (-want +got):\n%s", diff)
			}
			back, ok := WatchFromProto(got)
			if ok != tt.wantOK {
				t.Fatalf("WatchFromProto ok = %v, want %v", ok, tt.wantOK)
			}
			if ok && !cmp.Equal(back, tt.give) {
				t.Errorf("WatchFromProto = %+v, want %+v", back, tt.give)
			}
		})
	}
}

func TestUse(t *testing.T) {
	ev := &tokenwatchv1.TokenEvent{AuditId: "a1", Verb: "list", User: &tokenwatchv1.UserInfo{Present: true, Username: "system:serviceaccount:ns:app",
		Extra: map[string]*tokenwatchv1.StringList{lineage.ExtraCredentialID: {Values: []string{"JTI=j1"}}}}}
	tests := []struct {
		name         string
		give         *tokenwatchv1.LineageEvent
		wantKinds    []lineage.Kind
		wantLookback bool
		wantOK       bool
	}{
		{"token", &tokenwatchv1.LineageEvent{Event: ev, Matched: []tokenwatchv1.LineageKind{tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}},
			[]lineage.Kind{lineage.KindToken}, false, true},
		{"lookback, two kinds", &tokenwatchv1.LineageEvent{Event: ev, Lookback: true, Matched: []tokenwatchv1.LineageKind{
			tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_CREDENTIAL}},
			[]lineage.Kind{lineage.KindToken, lineage.KindActorCredential}, true, true},
		{"unknown and repeated kinds left out", &tokenwatchv1.LineageEvent{Event: ev, Matched: []tokenwatchv1.LineageKind{
			0, 42, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER, tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER}},
			[]lineage.Kind{lineage.KindActorUser}, false, true},
		{"no kind", &tokenwatchv1.LineageEvent{Event: ev}, nil, false, true},
		{"no event", &tokenwatchv1.LineageEvent{Matched: []tokenwatchv1.LineageKind{tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}}, nil, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, kinds, lookback, ok := UseFromProto(tt.give)
			if ok != tt.wantOK {
				t.Fatalf("UseFromProto ok = %v, want %v", ok, tt.wantOK)
			}
			if !ok {
				return
			}
			if diff := cmp.Diff(tt.wantKinds, kinds, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("kinds (-want +got):\n%s", diff)
			}
			if lookback != tt.wantLookback {
				t.Errorf("lookback = %v, want %v", lookback, tt.wantLookback)
			}
			if diff := cmp.Diff(FromProto(ev), e); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
			if got := lineage.CredentialJTI(e.User); got != "j1" {
				t.Errorf("CredentialJTI = %q, want j1", got)
			}
			back := UseToProto(e, kinds, lookback)
			e2, kinds2, lookback2, _ := UseFromProto(back)
			if !cmp.Equal(e, e2, cmpopts.EquateEmpty()) || !cmp.Equal(kinds, kinds2, cmpopts.EquateEmpty()) || lookback != lookback2 {
				t.Errorf("UseToProto round trip differs")
			}
		})
	}
}

func TestCount(t *testing.T) {
	full := lineage.Count{
		Kind: lineage.KindToken, Key: "j1", Uses: 7,
		Verbs:     map[string]uint64{"list secrets kube-system": 5, "get pods team-a": 2},
		SourceIPs: []string{"192.0.2.7", "198.51.100.1"},
		Codes:     map[string]uint64{"200": 6, "403": 1},
		First:     t0, Last: t1, User: "system:serviceaccount:ns:app",
	}
	fullWire := &tokenwatchv1.UseCount{
		Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: "j1", Uses: 7,
		Verbs:     []*tokenwatchv1.KeyCount{{Key: "get pods team-a", Count: 2}, {Key: "list secrets kube-system", Count: 5}},
		SourceIps: []string{"192.0.2.7", "198.51.100.1"},
		Codes:     []*tokenwatchv1.KeyCount{{Key: "200", Count: 6}, {Key: "403", Count: 1}},
		First:     timestamppb.New(t0), Last: timestamppb.New(t1), User: "system:serviceaccount:ns:app",
	}
	legacy := lineage.Count{Kind: lineage.KindLegacy, Key: "system:serviceaccount:a:b", Uses: 1}
	tests := []struct {
		name string
		give lineage.Count
		want *tokenwatchv1.UseCount
	}{
		{"full", full, fullWire},
		{"legacy, no times", legacy, &tokenwatchv1.UseCount{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN, Key: "system:serviceaccount:a:b", Uses: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CountToProto(tt.give)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("CountToProto (-want +got):\n%s", diff)
			}
			back, ok := CountFromProto(got)
			if !ok {
				t.Fatal("CountFromProto ok = false")
			}
			if diff := cmp.Diff(tt.give, back, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("CountFromProto (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCountFromProto(t *testing.T) {
	tests := []struct {
		name   string
		give   *tokenwatchv1.UseCount
		want   lineage.Count
		wantOK bool
	}{
		{"repeated keys add up", &tokenwatchv1.UseCount{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: "j1", Uses: 3,
			Verbs: []*tokenwatchv1.KeyCount{{Key: "get pods", Count: 1}, {Key: "get pods", Count: 2}}},
			lineage.Count{Kind: lineage.KindToken, Key: "j1", Uses: 3, Verbs: map[string]uint64{"get pods": 3}}, true},
		{"actor kind is no count", &tokenwatchv1.UseCount{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_ACTOR_USER, Key: "alice"}, lineage.Count{}, false},
		{"unspecified kind", &tokenwatchv1.UseCount{Key: "j1"}, lineage.Count{}, false},
		{"empty key", &tokenwatchv1.UseCount{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN}, lineage.Count{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := CountFromProto(tt.give)
			if ok != tt.wantOK {
				t.Fatalf("CountFromProto ok = %v, want %v", ok, tt.wantOK)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("CountFromProto (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUseEventIsAnEvent(t *testing.T) {
	// A use's event goes through FromProto like a token create's: the same
	// fields, nothing more.
	e := &audit.Event{AuditID: "a", Verb: "get", User: &audit.UserInfo{Username: "u"}}
	got, _, _, _ := UseFromProto(UseToProto(e, nil, false))
	if diff := cmp.Diff(e, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
