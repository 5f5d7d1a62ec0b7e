package lineage

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// op is one input of a generated run: a mint (jti set, e a token request)
// or a use.
type op struct {
	mint bool
	src  Source
	e    *audit.Event
	kind []Kind
}

// genRun returns mints of three tokens by two minters, then uses of them
// (some by a minter, some with legacy tokens), all within one summary
// interval.
func genRun(r *rand.Rand) (mints, uses []op) {
	ips := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.1"}
	srcs := []Source{src1, src2}
	reqs := [][3]string{{"list", "pods", ""}, {"get", "secrets", ""}, {"create", "pods", "exec"}, {"get", "nodes", "proxy"}, {"watch", "configmaps", ""}}
	for i, j := range []string{"t1", "t2", "t3"} {
		user := []string{"alice", "bob"}[i%2]
		mints = append(mints, op{mint: true, src: src1, e: mintEvent(j, user, ips[i%2], at(0))})
	}
	for i := range 60 {
		q := reqs[r.IntN(len(reqs))]
		jti, user := []string{"t1", "t2", "t3", ""}[r.IntN(4)], saBuilder
		if jti == "" {
			user = []string{"alice", "bob"}[r.IntN(2)]
		}
		e := useEvent(jti, user, ips[r.IntN(len(ips))], at(1+float64(r.IntN(8))), q[0], q[1], q[2], []string{"a", "b", "kube-system"}[r.IntN(3)])
		e.AuditID = fmt.Sprintf("u-%d", i)
		if r.IntN(6) == 0 {
			e.Annotations = map[string]string{AnnotationLegacyToken: "system:serviceaccount:ci:old"}
		}
		uses = append(uses, op{src: srcs[r.IntN(2)], e: e})
	}
	return mints, uses
}

// outcome is what must not depend on the order of uses, per token.
type outcome struct {
	Reported map[string][]string // reason -> keys, sorted
	Reasons  []string            // the union of tokenwatch.lineage.reasons
	New      []string            // the union of tokenwatch.lineage.new_reasons
	Summary  string              // the summary record's totals
}

func runOrder(t *testing.T, mints, uses []op) (map[string]outcome, []string) {
	t.Helper()
	s := New(DefaultConfig(), Hooks{})
	for _, m := range mints {
		mustMint(t, s, at(0), m.src, m.e)
	}
	out := map[string]outcome{}
	var other []string
	for _, u := range uses {
		for _, r := range s.Use(at(9), u.src, u.e, u.kind, false).Records {
			if r.EventName != EventTokenUse {
				other = append(other, r.ID)
				continue
			}
			jti := attrStr(r, "tokenwatch.lineage.jti")
			o := out[jti]
			v, _ := r.Attr(AttrReasons)
			o.Reasons = union(o.Reasons, v.Strings)
			v, _ = r.Attr(AttrNewReasons)
			o.New = union(o.New, v.Strings)
			out[jti] = o
		}
	}
	for jti, tok := range s.tokens {
		o := out[jti]
		o.Reported = map[string][]string{}
		for k, v := range tok.Reported {
			o.Reported[k] = slices.Sorted(slices.Values(v))
		}
		out[jti] = o
	}
	for _, r := range s.Tick(at(10)).Records {
		if r.EventName != EventTokenUseSummary {
			other = append(other, r.ID+" "+attrStr(r, "tokenwatch.lineage.uses")+attrStr(r, "tokenwatch.lineage.verbs"))
			continue
		}
		jti := attrStr(r, "tokenwatch.lineage.jti")
		o := out[jti]
		o.Summary = fmt.Sprint(attrStr(r, "tokenwatch.lineage.uses"), attrStr(r, "tokenwatch.lineage.source_ips"),
			attrStr(r, "k8s.cluster.names"), attrStr(r, "tokenwatch.lineage.verbs"), attrStr(r, "tokenwatch.lineage.outcomes"),
			attrStr(r, "tokenwatch.lineage.first_use"), attrStr(r, "tokenwatch.lineage.last_use"))
		out[jti] = o
	}
	sort.Strings(other)
	return out, other
}

func union(a, b []string) []string {
	for _, s := range b {
		if !slices.Contains(a, s) {
			a = append(a, s)
		}
	}
	slices.Sort(a)
	return a
}

// TestOrderIndependence: delivering the same uses in another order may
// move first_use (and so change which requests carry a record), but per
// token the reported (reason, key) pairs, the union of reasons and the
// summary totals stay the same, as do the actor follow-ups and legacy
// records.
func TestOrderIndependence(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 7))
		mints, uses := genRun(r)
		want, wantOther := runOrder(t, mints, uses)
		shuffled := slices.Clone(uses)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got, gotOther := runOrder(t, mints, shuffled)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("seed %d: per-token outcome differs (-in order +shuffled):\n%s", seed, diff)
		}
		if len(want) == 0 {
			t.Fatalf("seed %d: no token used", seed)
		}
		// Follow-ups are deduplicated by key, so the records differ by
		// which request carries them; their number and legacy totals do not.
		if len(wantOther) != len(gotOther) {
			t.Fatalf("seed %d: other records %d in order, %d shuffled", seed, len(wantOther), len(gotOther))
		}
	}
}

// store applies Changes to a map, as the aggregator's store does.
func store(t *testing.T, s *State, m map[string]Entry) {
	t.Helper()
	put, del, err := s.Changes()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range put {
		m[e.Key] = e
	}
	for _, k := range del {
		delete(m, k)
	}
}

// TestRoundTripMidRun: a state rebuilt from its stored entries at any
// point of a run behaves as the one it was stored from.
func TestRoundTripMidRun(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 11))
		mints, uses := genRun(r)
		cfg := DefaultConfig()
		cfg.MaxWatched = 2
		a := New(cfg, Hooks{})
		stored := map[string]Entry{}
		for _, m := range mints {
			mustMint(t, a, at(0), m.src, m.e)
		}
		split := r.IntN(len(uses))
		for i, u := range uses[:split] {
			a.Use(at(float64(i)/4), u.src, u.e, nil, false)
			if i%7 == 0 {
				store(t, a, stored)
			}
		}
		store(t, a, stored)
		b := New(cfg, Hooks{})
		entries := make([]Entry, 0, len(stored))
		for _, e := range stored {
			entries = append(entries, e)
		}
		if err := b.Load(entries); err != nil {
			t.Fatal(err)
		}
		for i, u := range uses[split:] {
			now := at(float64(split+i) / 4)
			if fa, fb := a.Use(now, u.src, u.e, nil, false), b.Use(now, u.src, u.e, nil, false); !cmp.Equal(fa, fb) {
				t.Fatalf("seed %d: Use %d differs after Load:\n%s", seed, split+i, cmp.Diff(fa, fb))
			}
		}
		for _, now := range []float64{10, 20, 63, 80} {
			if fa, fb := a.Tick(at(now)), b.Tick(at(now)); !cmp.Equal(fa, fb) {
				t.Fatalf("seed %d: Tick(%v) differs after Load:\n%s", seed, now, cmp.Diff(fa, fb))
			}
			if wa, wb := a.Watches(at(now)), b.Watches(at(now)); !cmp.Equal(wa, wb) {
				t.Fatalf("seed %d: Watches(%v) differ after Load:\n%s", seed, now, cmp.Diff(wa, wb))
			}
		}
		store(t, a, stored)
		if len(stored) != 0 {
			t.Errorf("seed %d: %d entries stored after everything expired", seed, len(stored))
		}
	}
}
