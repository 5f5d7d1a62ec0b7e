package lineage

import (
	"encoding/json"
	"testing"
)

// FuzzLoad: stored entries, damaged or forged, never panic Load nor the
// operations after it.
func FuzzLoad(f *testing.F) {
	s := New(DefaultConfig(), Hooks{})
	scenarioSeed(s)
	put, _, _ := s.Changes()
	for _, e := range put {
		f.Add(e.Key, []byte(e.Value))
	}
	f.Add("token/x", []byte(`{"mint":{"jti":"x"},"usage":{}}`))
	f.Add("legacy/x", []byte(`{"usage":null}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		if !json.Valid(value) {
			return
		}
		s := New(DefaultConfig(), Hooks{})
		if err := s.Load([]Entry{{Key: key, Value: value}}); err != nil {
			return
		}
		s.Use(at(1), src1, useEvent("x", saBuilder, "10.0.0.9", at(1), "get", "secrets", "", "a"), nil, false)
		s.Count(at(1), src1, Count{Kind: KindToken, Key: "x", Uses: 1})
		s.Watches(at(1))
		s.Tick(at(100000))
		if _, _, err := s.Changes(); err != nil {
			t.Fatal(err)
		}
	})
}

// scenarioSeed fills s with one entry of each kind.
func scenarioSeed(s *State) {
	m, _ := s.MintOf(src1, mintEvent("j1", "alice", "10.0.0.1", at(0)))
	s.Mint(at(0), m)
	s.Use(at(1), src1, useEvent("j1", saBuilder, "10.0.0.2", at(1), "get", "secrets", "", "a"), nil, false)
	l := useEvent("", "system:serviceaccount:ci:old", "10.0.0.3", at(1), "get", "pods", "", "ci")
	l.Annotations = map[string]string{AnnotationLegacyToken: "system:serviceaccount:ci:old"}
	s.Use(at(1), src1, l, nil, false)
	s.countDropped(at(1), "alice", &Effects{})
}
