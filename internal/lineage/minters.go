package lineage

import (
	"container/heap"
	"sort"
)

// minter indexes the watched tokens of one minter (user name), oldest
// first, for max_watched.
type minter struct {
	name string
	toks []*token // by (Mint.Time, Mint.JTI)
	pos  int      // index in the heap
}

func tokenBefore(a, b *token) bool {
	if !a.Mint.Time.Equal(b.Mint.Time) {
		return a.Mint.Time.Before(b.Mint.Time)
	}
	return a.Mint.JTI < b.Mint.JTI
}

// minterHeap orders minters by watches held, most first, then by name.
type minterHeap []*minter

func (h minterHeap) Len() int { return len(h) }
func (h minterHeap) Less(i, j int) bool {
	if len(h[i].toks) != len(h[j].toks) {
		return len(h[i].toks) > len(h[j].toks)
	}
	return h[i].name < h[j].name
}
func (h minterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i, j
}
func (h *minterHeap) Push(x any) {
	m := x.(*minter)
	m.pos = len(*h)
	*h = append(*h, m)
}
func (h *minterHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return m
}

// index adds t to its minter's watches.
func (s *State) index(t *token) {
	m := s.minters[t.Mint.User]
	if m == nil {
		m = &minter{name: t.Mint.User}
		s.minters[m.name] = m
		heap.Push(&s.heap, m)
	}
	i := sort.Search(len(m.toks), func(i int) bool { return !tokenBefore(m.toks[i], t) })
	m.toks = append(m.toks, nil)
	copy(m.toks[i+1:], m.toks[i:])
	m.toks[i] = t
	heap.Fix(&s.heap, m.pos)
}

// unindex removes t from its minter's watches.
func (s *State) unindex(t *token) {
	m := s.minters[t.Mint.User]
	if m == nil {
		return
	}
	i := sort.Search(len(m.toks), func(i int) bool { return !tokenBefore(m.toks[i], t) })
	if i == len(m.toks) || m.toks[i] != t {
		return
	}
	m.toks = append(m.toks[:i], m.toks[i+1:]...)
	if len(m.toks) == 0 {
		heap.Remove(&s.heap, m.pos)
		delete(s.minters, m.name)
		return
	}
	heap.Fix(&s.heap, m.pos)
}

// victim returns the watch max_watched drops: the oldest of the minter
// holding the most, current (the minter now adding one) when it holds as
// many as any other, so that one minter never evicts another's watches
// while holding no fewer.
func (s *State) victim(current string) *token {
	if len(s.heap) == 0 {
		return nil
	}
	v := s.heap[0]
	if c := s.minters[current]; c != nil && len(c.toks) == len(v.toks) {
		v = c
	}
	return v.toks[0]
}
