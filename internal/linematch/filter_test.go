package linematch

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestIDFilterHoldsEveryKey checks that the uuid filter never rules out a
// watched uuid, whatever its case, through adds that grow it and removals
// and expiries that rebuild it.
func TestIDFilterHoldsEveryKey(t *testing.T) {
	key := func(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i*2654435761%(1<<32), i) }
	tests := []struct {
		name   string
		add    int // keys 0..add-1, even ones as Token, odd ones as ActorCredential
		remove int // keys 0..remove-1 removed
		expire int // keys remove..expire-1 expire
		upper  bool
	}{
		{name: "one", add: 1},
		{name: "grows", add: 5000},
		{name: "upper case", add: 700, upper: true},
		{name: "most removed", add: 3000, remove: 2500},
		{name: "all removed", add: 100, remove: 100},
		{name: "most expired", add: 3000, remove: 10, expire: 2900},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Set{}
			kind := func(i int) Kind { return []Kind{Token, ActorCredential}[i%2] }
			for i := range tt.add {
				k := key(i)
				if tt.upper {
					k = strings.ToUpper(k)
				}
				w := Watch{Kind: kind(i), Key: k}
				if i < tt.expire {
					w.Until = t0
				}
				if err := s.Add(w); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tt.remove {
				s.Remove(kind(i), key(i))
			}
			if tt.expire > 0 {
				s.Expire(t0.Add(time.Second))
			}
			live := 0
			for i := max(tt.remove, tt.expire); i < tt.add; i++ {
				id, _ := parseUUID(key(i))
				if !s.ids.mayHold(&id) {
					t.Fatalf("filter rules out watched key %d %s", i, key(i))
				}
				for _, text := range []string{key(i), strings.ToUpper(key(i)), strings.ToUpper(key(i)[:4]) + key(i)[4:]} {
					if line := `"` + text + `"`; !s.ids.mayHoldText([]byte(line), 1) {
						t.Fatalf("filter rules out watched key %d written %s", i, text)
					}
				}
				live++
			}
			if got := s.Len(Token | ActorCredential); got != live {
				t.Fatalf("Len = %d, want %d", got, live)
			}
			if s.ids.keys > 2*live+1 {
				t.Errorf("filter holds %d keys for %d live ones", s.ids.keys, live)
			}
		})
	}
}
