package linematch

import (
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

func TestEntryBytes(t *testing.T) {
	if got := unsafe.Sizeof(entry{}); got != EntryBytes {
		t.Errorf("entry is %d bytes, EntryBytes says %d", got, EntryBytes)
	}
}

func TestLookbackFind(t *testing.T) {
	idA, _ := parseUUID(jtiA)
	idB, _ := parseUUID(jtiB)
	l := NewLookback(10)
	at := func(i int) Location { return Location{File: 1, Offset: uint64(100 * i), Length: 99} }
	for i, k := range []Keys{
		{JTI: idA, HasJTI: true, User: UserHash("system:serviceaccount:a:b")},
		{JTI: idB, HasJTI: true, User: UserHash("system:serviceaccount:a:c")},
		{User: UserHash("alice")},
		{User: UserHash("bob"), User2: UserHash("alice")},
		{Unsure: true},
		{},
	} {
		if _, ok := l.Add(k, at(i), t0); !ok {
			t.Fatal("Add refused")
		}
	}
	tests := []struct {
		name string
		give []Watch
		want []Location
	}{
		{"token", []Watch{{Kind: Token, Key: jtiA}}, []Location{at(0), at(4)}},
		{"credential upper case", []Watch{{Kind: ActorCredential, Key: "0B1C2D3E-AAAA-4BBB-8CCC-000000000001"}}, []Location{at(1), at(4)}},
		{"user", []Watch{{Kind: ActorUser, Key: "alice"}}, []Location{at(2), at(3), at(4)}},
		{"several", []Watch{{Kind: ActorUser, Key: "bob"}, {Kind: Token, Key: jtiB}}, []Location{at(1), at(3), at(4)}},
		{"odd jti: unsure lines only", []Watch{{Kind: Token, Key: "odd"}}, []Location{at(4)}},
		{"legacy is no watch", []Watch{{Kind: Legacy, Key: "x"}}, nil},
		{"none", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, l.Find(tt.give)); diff != "" {
				t.Errorf("Find(%+v) (-want +got):\n%s", tt.give, diff)
			}
		})
	}
}

func TestLookbackEvictAndPin(t *testing.T) {
	l := NewLookback(4)
	for i := range 4 {
		seq, ok := l.Add(Keys{Unsure: true}, Location{Offset: uint64(i)}, t0.Add(time.Duration(i)*time.Second))
		if !ok || seq != uint64(i) {
			t.Fatalf("Add #%d = %d, %v", i, seq, ok)
		}
	}
	// Full: the oldest goes.
	if seq, ok := l.Add(Keys{Unsure: true}, Location{Offset: 4}, t0.Add(4*time.Second)); !ok || seq != 4 || l.Dropped() != 1 {
		t.Fatalf("Add on full = %d, %v, dropped %d", seq, ok, l.Dropped())
	}
	// Pinned from 2: evicting at t0+10s with a 5 s window keeps 2..4.
	l.Pin(2)
	if n := l.Evict(t0.Add(10*time.Second), 5*time.Second); n != 1 || l.Len() != 3 {
		t.Fatalf("Evict = %d, len %d; want 1, 3", n, l.Len())
	}
	l.Add(Keys{Unsure: true}, Location{Offset: 5}, t0.Add(5*time.Second))
	if _, ok := l.Add(Keys{Unsure: true}, Location{Offset: 6}, t0.Add(6*time.Second)); ok {
		t.Fatal("Add evicted a pinned entry")
	}
	got := l.Find([]Watch{{Kind: ActorUser, Key: "x"}})
	want := []Location{{Offset: 2}, {Offset: 3}, {Offset: 4}, {Offset: 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Find after pin (-want +got):\n%s", diff)
	}
	l.Pin(NoPin)
	if n := l.Evict(t0.Add(9*time.Second), 5*time.Second); n != 2 || l.Len() != 2 {
		t.Errorf("Evict after unpin = %d, len %d; want 2, 2", n, l.Len())
	}
	if n := l.Evict(t0.Add(time.Hour), time.Minute); n != 2 || l.Len() != 0 || l.Next() != 6 {
		t.Errorf("Evict all = %d, len %d, next %d; want 2, 0, 6", n, l.Len(), l.Next())
	}
}
