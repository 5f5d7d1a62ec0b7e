package lineage

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Entry is one stored piece of the state: a watched token ("token/<jti>"),
// a followed minter ("actor/<kind>/<key>"), a legacy accumulator
// ("legacy/<quoted cluster>/<quoted service account>") or the count of
// dropped watches ("full"). Value is JSON with stable field names.
type Entry struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// Changes returns the entries changed since the previous call (to store)
// and the keys of those freed (to delete), each sorted by key, and
// forgets them: commit them with the acknowledgement of the batch whose
// operations made them.
func (s *State) Changes() (put []Entry, del []string, err error) {
	for _, k := range sortedSet(s.dirty) {
		v, ok := s.entry(k)
		if !ok {
			del = append(del, k)
			continue
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, nil, fmt.Errorf("encode lineage entry %s: %w", k, err)
		}
		put = append(put, Entry{Key: k, Value: raw})
	}
	clear(s.dirty)
	return put, del, nil
}

// entry returns the value stored under key k, false when there is none.
func (s *State) entry(k string) (any, bool) {
	kind, rest, _ := strings.Cut(k, "/")
	switch kind {
	case "token":
		t, ok := s.tokens[rest]
		return t, ok
	case "actor":
		a, ok := s.actors[rest]
		return a, ok
	case "legacy":
		l, ok := s.legacy[rest]
		return l, ok
	case "full":
		return s.full, s.full != nil
	}
	return nil, false
}

// Load adds stored entries to s, a new state, as Changes returned them.
func (s *State) Load(entries []Entry) error {
	for _, e := range entries {
		if err := s.load(e); err != nil {
			return fmt.Errorf("load lineage entry %s: %w", e.Key, err)
		}
	}
	return nil
}

func (s *State) load(e Entry) error {
	kind, _, _ := strings.Cut(e.Key, "/")
	switch kind {
	case "token":
		var t token
		if err := json.Unmarshal(e.Value, &t); err != nil {
			return err
		}
		if t.Mint.JTI == "" || t.FreeAt.IsZero() {
			return fmt.Errorf("no jti or free_at")
		}
		if old := s.tokens[t.Mint.JTI]; old != nil {
			s.unindex(old)
		}
		if t.Usage != nil {
			t.Usage.init()
			s.open[t.Mint.JTI] = true
		}
		s.tokens[t.Mint.JTI] = &t
		s.index(&t)
		s.freeBy(t.FreeAt)
	case "actor":
		var a actor
		if err := json.Unmarshal(e.Value, &a); err != nil {
			return err
		}
		for _, am := range a.Mints {
			if am.FreeAt.IsZero() {
				return fmt.Errorf("no free_at")
			}
			s.freeBy(am.FreeAt)
		}
		if len(a.Mints) == 0 {
			return fmt.Errorf("no mints")
		}
		s.actors[actorID(a.Kind, a.Key)] = &a
	case "legacy":
		var l legacy
		if err := json.Unmarshal(e.Value, &l); err != nil {
			return err
		}
		if l.Usage == nil {
			return fmt.Errorf("no usage")
		}
		l.Usage.init()
		s.legacy[legacyID(l.Cluster, l.ServiceAccount)] = &l
	case "full":
		var f full
		if err := json.Unmarshal(e.Value, &f); err != nil {
			return err
		}
		if f.Minters == nil {
			f.Minters = map[string]uint64{}
		}
		s.full = &f
	default:
		return fmt.Errorf("unknown kind %q", kind)
	}
	return nil
}
