package linematch

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/auditgen"
	"github.com/tokenwatch/tokenwatch/internal/prefilter"
)

// benchUUID returns a deterministic uuid for i.
func benchUUID(i int) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", i*2654435761%(1<<32), i)
}

// benchLog returns a generated log of about size bytes with ~1.1 KB lines;
// with lineage set, 60% of requests come from 5,000 workloads with bound
// tokens.
func benchLog(tb testing.TB, size int, lineage bool) []byte {
	tb.Helper()
	cfg := auditgen.Config{Seed: 1, Lines: size / 1100, TokenRate: 0.005, Step: time.Millisecond, Attacks: true, Pad: 1100}
	if lineage {
		cfg.WorkloadRate = 0.6
		for i := range 5000 {
			cfg.Workloads = append(cfg.Workloads, auditgen.Workload{
				User: fmt.Sprintf("system:serviceaccount:ns-%d:sa-%d", i%50, i), JTI: benchUUID(i)})
		}
	}
	var buf bytes.Buffer
	if _, _, err := auditgen.Generate(&buf, cfg); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// benchSet watches 10,000 tokens (20 of them the workloads') and follows
// 1,000 minters (500 names, 10 of them workloads'; 500 credentials, 10 of
// them workloads'), as bench/scan's variant (b).
func benchSet(tb testing.TB) *Set {
	s := &Set{}
	add := func(w Watch) {
		if err := s.Add(w); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range 10000 {
		k := benchUUID(100000 + i)
		if i < 20 {
			k = benchUUID(i * 100)
		}
		add(Watch{Kind: Token, Key: k})
	}
	for i := range 500 {
		name, cred := fmt.Sprintf("user-%d@example.com", i), benchUUID(200000+i)
		if i < 10 {
			name = fmt.Sprintf("system:serviceaccount:ns-%d:sa-%d", (i*20+7)%50, i*20+7)
			cred = benchUUID(i*100 + 13)
		}
		add(Watch{Kind: ActorUser, Key: name})
		add(Watch{Kind: ActorCredential, Key: cred})
	}
	return s
}

// BenchmarkMatch measures the matcher on 1 MiB blocks against the
// pre-filter on the same blocks, and the two as the agent runs them (the
// matcher taking the pre-filter's marks). Run with
//
//	go test ./internal/linematch -run XXX -bench Match
func BenchmarkMatch(b *testing.B) {
	logs := []struct {
		name    string
		data    []byte
		watched *Set
	}{
		{"generated", benchLog(b, 32<<20, false), &Set{}},
		{"lineage", benchLog(b, 32<<20, true), benchSet(b)},
	}
	for _, lg := range logs {
		blocks := split(lg.data, 1<<20)
		run := func(name string, fn func(block []byte)) {
			b.Run(lg.name+"/"+name, func(b *testing.B) {
				b.SetBytes(int64(len(lg.data)))
				for b.Loop() {
					for _, bl := range blocks {
						fn(bl)
					}
				}
			})
		}
		var f prefilter.Filter
		var ms []prefilter.Match
		run("prefilter", func(bl []byte) { ms, _ = f.Block(ms[:0], bl) })
		var m Matcher
		var hs []Hit
		run("block-empty", func(bl []byte) { hs, _ = m.Block(hs[:0], bl, &Set{}) })
		run("block-watched", func(bl []byte) { hs, _ = m.Block(hs[:0], bl, lg.watched) })
		// As the agent reads: the pre-filter, then the matcher with its marks.
		run("prefilter+block-empty", func(bl []byte) {
			ms, _ = f.Block(ms[:0], bl)
			hs, _ = m.BlockMarked(hs[:0], bl, &Set{}, f.Marks())
		})
		run("prefilter+block-watched", func(bl []byte) {
			ms, _ = f.Block(ms[:0], bl)
			hs, _ = m.BlockMarked(hs[:0], bl, lg.watched, f.Marks())
		})
	}
}

// split cuts data into blocks of about size bytes, at line ends.
func split(data []byte, size int) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		n := min(size, len(data))
		if i := bytes.LastIndexByte(data[:n], '\n'); i >= 0 && n < len(data) {
			n = i + 1
		}
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}
