package uses

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// TestStages: a request counts once, as the stage that carries its
// outcome: ResponseComplete (or Panic), or ResponseStarted for a
// long-running request, whose ResponseComplete is then skipped.
func TestStages(t *testing.T) {
	type ev struct{ stage, id string }
	tests := []struct {
		name string
		give []ev
		want []bool
	}{
		{"request received", []ev{{audit.StageRequestReceived, "a"}}, []bool{false}},
		{"response complete", []ev{{audit.StageResponseComplete, "a"}}, []bool{true}},
		{"panic", []ev{{audit.StagePanic, "a"}}, []bool{true}},
		{"no stage", []ev{{"", "a"}}, []bool{true}},
		{"unknown stage", []ev{{"Later", "a"}}, []bool{true}},
		{"short request", []ev{{audit.StageRequestReceived, "a"}, {audit.StageResponseComplete, "a"}}, []bool{false, true}},
		{"long-running", []ev{{audit.StageRequestReceived, "a"}, {audit.StageResponseStarted, "a"}, {audit.StageResponseComplete, "a"}},
			[]bool{false, true, false}},
		{"long-running that panics", []ev{{audit.StageResponseStarted, "a"}, {audit.StagePanic, "a"}}, []bool{true, false}},
		{"long-running, interleaved", []ev{
			{audit.StageResponseStarted, "w1"}, {audit.StageResponseStarted, "w2"}, {audit.StageResponseComplete, "x"},
			{audit.StageResponseComplete, "w2"}, {audit.StageResponseComplete, "w1"},
		}, []bool{true, true, true, false, false}},
		{"an end is skipped once", []ev{{audit.StageResponseStarted, "a"}, {audit.StageResponseComplete, "a"}, {audit.StageResponseComplete, "a"}},
			[]bool{true, false, true}},
		{"started without auditID", []ev{{audit.StageResponseStarted, ""}, {audit.StageResponseComplete, ""}}, []bool{true, true}},
		{"end only (its start read before the watch, or before a restart)", []ev{{audit.StageResponseComplete, "a"}}, []bool{true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStages(maxStarted)
			var got []bool
			for _, e := range tt.give {
				got = append(got, s.use(&audit.Event{Stage: e.stage, AuditID: e.id}, 0))
			}
			if !cmp.Equal(got, tt.want) {
				t.Errorf("use(%v) = %v, want %v", tt.give, got, tt.want)
			}
		})
	}
}

// TestStagesBound: the last max starts are remembered; an older one's end
// counts again, and is counted as forgotten.
func TestStagesBound(t *testing.T) {
	const max = 3
	s := newStages(max)
	use := func(stage, id string) bool { return s.use(&audit.Event{Stage: stage, AuditID: id}, 0) }
	for i := range max + 1 {
		if !use(audit.StageResponseStarted, fmt.Sprint("w", i)) {
			t.Fatalf("start w%d is not a use", i)
		}
	}
	if !use(audit.StageResponseComplete, "w0") {
		t.Errorf("end of w0, started %d starts before: skipped, want a use (forgotten)", max)
	}
	for i := 1; i <= max; i++ {
		if use(audit.StageResponseComplete, fmt.Sprint("w", i)) {
			t.Errorf("end of w%d is a use, want it skipped (remembered)", i)
		}
	}
	if s.forgotten != 1 || len(s.open) != 0 || len(s.ring) != max {
		t.Errorf("forgotten %d, open %d, ring %d; want 1, 0, %d", s.forgotten, len(s.open), len(s.ring), max)
	}
	// Ended starts leave the ring without counting as forgotten.
	for i := range 2 * max {
		use(audit.StageResponseStarted, fmt.Sprint("v", i))
		use(audit.StageResponseComplete, fmt.Sprint("v", i))
	}
	if s.forgotten != 1 || len(s.open) != 0 {
		t.Errorf("after ended starts: forgotten %d, open %d; want 1, 0", s.forgotten, len(s.open))
	}
}

// stagedLog is a log of requests made with jtiA and the legacy token,
// each logged at every stage the apiserver logs it: two lists (the second
// denied), a watch and an exec (long-running: ResponseStarted), a legacy
// list and a denied legacy list. Its blocks end between a request's
// stages.
func stagedLog() []string {
	rr, rs := audit.StageRequestReceived, audit.StageResponseStarted
	list1 := req{id: "list1", jti: jtiA, ip: "10.0.0.1", verb: "list", resource: "secrets", ns: "team-a"}
	list2 := req{id: "list2", jti: jtiA, ip: "10.0.0.1", verb: "list", resource: "secrets", ns: "team-a", code: 403}
	watch := req{id: "watch", jti: jtiA, ip: "10.0.0.1", verb: "watch", resource: "configmaps", ns: "team-a"}
	exec := req{id: "exec", jti: jtiA, ip: "10.0.0.2", verb: "create", resource: "pods", sub: "exec", ns: "team-a", code: 101}
	leg1 := req{id: "leg1", user: legacySA, legacy: legacySA, ip: "10.0.0.7", verb: "list", ns: "team-b"}
	leg2 := req{id: "leg2", user: legacySA, legacy: legacySA, ip: "10.0.0.7", verb: "list", resource: "secrets", ns: "team-b", code: 403}
	at := func(r req, stage string) req { r.stage = stage; return r }
	return []string{
		lines(at(list1, rr), at(watch, rr), at(watch, rs), list1, at(exec, rr)),
		lines(at(exec, rs), at(leg1, rr), leg1, at(list2, rr), at(leg2, rr)),
		lines(list2, leg2, watch, exec),
	}
}

// wantStaged are the uses and counts of stagedLog: one per request, from
// the stage that carries its outcome.
var wantStaged = struct {
	uses   []string
	codes  map[string]int32
	stages map[string]string
	counts []*tokenwatchv1.UseCount
}{
	uses:   []string{"watch", "list1", "exec"}, // first per reason key: ip, ip + secrets_read, ip + pod_exec
	codes:  map[string]int32{"watch": 200, "list1": 200, "exec": 101},
	stages: map[string]string{"watch": audit.StageResponseStarted, "list1": audit.StageResponseComplete, "exec": audit.StageResponseStarted},
	counts: []*tokenwatchv1.UseCount{
		{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: jtiA, Uses: 1,
			Verbs:     []*tokenwatchv1.KeyCount{{Key: "list secrets team-a", Count: 1}},
			SourceIps: []string{"10.0.0.1"},
			Codes:     []*tokenwatchv1.KeyCount{{Key: "403", Count: 1}},
			User:      "system:serviceaccount:team-a:app"},
		{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_LEGACY_TOKEN, Key: legacySA, Uses: 2,
			Verbs:     []*tokenwatchv1.KeyCount{{Key: "list configmaps team-b", Count: 1}, {Key: "list secrets team-b", Count: 1}},
			SourceIps: []string{"10.0.0.7"},
			Codes:     []*tokenwatchv1.KeyCount{{Key: "200", Count: 1}, {Key: "403", Count: 1}},
			User:      legacySA},
	},
}

// checkStaged compares the uses and counts of stagedLog with wantStaged;
// legacy says whether legacy counts are expected (they are matched live
// only).
func checkStaged(t *testing.T, uses []*tokenwatchv1.LineageEvent, counts []*tokenwatchv1.UseCount, legacy bool) {
	t.Helper()
	var ids []string
	for _, u := range uses {
		id := u.GetEvent().GetAuditId()
		ids = append(ids, id)
		if got := u.GetEvent().GetStage(); got != wantStaged.stages[id] {
			t.Errorf("use %s sent from its %s event, want %s", id, got, wantStaged.stages[id])
		}
		if got := u.GetEvent().GetResponseStatus().GetCode(); got != wantStaged.codes[id] {
			t.Errorf("use %s: response code %d, want %d", id, got, wantStaged.codes[id])
		}
	}
	if diff := cmp.Diff(wantStaged.uses, ids); diff != "" {
		t.Errorf("uses sent (-want +got):\n%s", diff)
	}
	want := wantStaged.counts
	if !legacy {
		want = want[:1]
	}
	if diff := cmp.Diff(want, counts, protocmp.Transform(), protocmp.IgnoreFields(&tokenwatchv1.UseCount{}, "first", "last")); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

// TestStageIsOneUse: read live, each request of stagedLog is one use.
func TestStageIsOneUse(t *testing.T) {
	tr, _, _ := newTracker(t, 1<<20)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	log := newLog(t)
	var uses []*tokenwatchv1.LineageEvent
	var counts []*tokenwatchv1.UseCount
	for _, s := range stagedLog() {
		it, _, err := tr.Block(context.Background(), log.block(s), false)
		if err != nil {
			t.Fatal(err)
		}
		uses = append(uses, it.Uses...)
		counts = mergeCounts(counts, it.Counts)
	}
	checkStaged(t, uses, counts, true)
}

// TestStageIsOneUseLookback: read before the watch arrived, then read
// again by its search, each request of stagedLog is one use too.
func TestStageIsOneUseLookback(t *testing.T) {
	tr, q, _ := newTracker(t, 1<<20)
	run(t, tr)
	log := newLog(t)
	var legacy []*tokenwatchv1.UseCount // legacy requests are counted when read
	for _, s := range stagedLog() {
		it, _, err := tr.Block(context.Background(), log.block(s), false)
		if err != nil {
			t.Fatal(err)
		}
		legacy = mergeCounts(legacy, it.Counts)
	}
	queueAll(tr)
	tr.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	items := q.wait(t, "the lookback uses", func(items []sender.Items) bool { return len(items) > 0 })
	rest, err := tr.Drain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var uses []*tokenwatchv1.LineageEvent
	counts := rest.Counts
	for _, it := range items {
		uses = append(uses, it.Uses...)
		counts = mergeCounts(counts, it.Counts)
	}
	checkStaged(t, uses, counts, false)
	if diff := cmp.Diff(wantStaged.counts[1:], legacy, protocmp.Transform(),
		protocmp.IgnoreFields(&tokenwatchv1.UseCount{}, "first", "last")); diff != "" {
		t.Errorf("legacy counts (-want +got):\n%s", diff)
	}
}

// mergeCounts adds the counts of more to those of dst with the same kind
// and key (their uses, verbs and codes; the rest from the first), ordered
// as Block orders them.
func mergeCounts(dst, more []*tokenwatchv1.UseCount) []*tokenwatchv1.UseCount {
	for _, c := range more {
		i := 0
		for i < len(dst) && (dst[i].Kind != c.Kind || dst[i].Key != c.Key) {
			i++
		}
		if i == len(dst) {
			dst = append(dst, c)
			continue
		}
		d := dst[i]
		d.Uses += c.Uses
		d.Verbs = addKeyCounts(d.Verbs, c.Verbs)
		d.Codes = addKeyCounts(d.Codes, c.Codes)
	}
	slices.SortFunc(dst, func(a, b *tokenwatchv1.UseCount) int {
		if a.Kind != b.Kind {
			return int(a.Kind) - int(b.Kind)
		}
		return strings.Compare(a.Key, b.Key)
	})
	return dst
}

func addKeyCounts(dst, more []*tokenwatchv1.KeyCount) []*tokenwatchv1.KeyCount {
	for _, k := range more {
		found := false
		for _, d := range dst {
			if d.Key == k.Key {
				d.Count += k.Count
				found = true
			}
		}
		if !found {
			dst = append(dst, k)
		}
	}
	return dst
}

// TestStagesAcknowledged: the starts kept are the open ones and those
// whose end was read in a block not acknowledged yet; restored, they make
// an end read after a restart be skipped.
func TestStagesAcknowledged(t *testing.T) {
	s := newStages(maxStarted)
	use := func(stage, id string, ticket uint64) bool {
		return s.use(&audit.Event{Stage: stage, AuditID: id}, ticket)
	}
	ha, hb := s.hash("a"), s.hash("b")
	both := slices.Sorted(slices.Values([]uint64{ha, hb}))
	var lastGen uint64
	check := func(when string, want []uint64, changed bool) {
		t.Helper()
		key, got, gen := s.settled()
		if (key == nil) != (len(got) == 0) {
			t.Errorf("%s: key %x with %d hashes", when, key, len(got))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: kept %x, want %x", when, got, want)
		}
		if (gen != lastGen) != changed {
			t.Errorf("%s: generation %d after %d, want changed=%v", when, gen, lastGen, changed)
		}
		lastGen = gen
	}
	check("at first", nil, false)
	use(audit.StageResponseStarted, "a", 1)
	use(audit.StageResponseStarted, "b", 2)
	check("two starts, none acknowledged", both, true)
	use(audit.StageResponseComplete, "a", 3)
	check("a ended in block 3", both, false)
	s.acknowledged(2)
	check("block 2 acknowledged", both, false)
	s.acknowledged(3)
	check("block 3 acknowledged", []uint64{hb}, true)
	s.acknowledged(3)
	check("block 3 acknowledged again", []uint64{hb}, false)

	key, hashes, _ := s.settled()
	restored := newStages(maxStarted)
	restored.restore(key, hashes)
	if restored.use(&audit.Event{Stage: audit.StageResponseComplete, AuditID: "b"}, 1) {
		t.Error("end of b, started before the restart: a use, want it skipped")
	}
	if !restored.use(&audit.Event{Stage: audit.StageResponseComplete, AuditID: "a"}, 1) {
		t.Error("end of a, ended before the restart: skipped, want a use")
	}
	other := newStages(maxStarted)
	other.restore(key[:8], hashes)
	if !other.use(&audit.Event{Stage: audit.StageResponseComplete, AuditID: "b"}, 1) {
		t.Error("restored with a short key: end of b skipped, want the starts ignored")
	}
}

// TestStageRestart: a long-running request whose start was acknowledged
// before the agent restarted counts once: its end, read by the next
// Tracker from the checkpoint's starts, is neither sent nor counted.
func TestStageRestart(t *testing.T) {
	log := newLog(t)
	blocks := stagedLog()
	first, _, _ := newTracker(t, 1<<20)
	first.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
	var ticket uint64
	for _, s := range blocks[:2] {
		var err error
		if _, ticket, err = first.Block(context.Background(), log.block(s), false); err != nil {
			t.Fatal(err)
		}
	}
	first.Acked(ticket)
	key, hashes, _ := first.Starts()
	if len(hashes) != 2 {
		t.Fatalf("starts kept: %d, want 2 (the watch and the exec)", len(hashes))
	}
	last := log.block(blocks[2])
	for _, tt := range []struct {
		name    string
		restore bool
		want    uint64
	}{
		{"restored", true, 1},      // list2
		{"not restored", false, 3}, // list2, and the watch and exec ends again
	} {
		t.Run(tt.name, func(t *testing.T) {
			next, _, _ := newTracker(t, 1<<20)
			next.Watch(&tokenwatchv1.WatchUpdate{Add: []*tokenwatchv1.Watch{tokenWatch(jtiA)}})
			if tt.restore {
				next.RestoreStarts(key, hashes)
			}
			it, _, err := next.Block(context.Background(), last, false)
			if err != nil {
				t.Fatal(err)
			}
			n := uint64(0)
			for _, u := range it.Uses {
				if slices.Contains(u.GetMatched(), tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN) {
					n++
				}
			}
			for _, c := range it.Counts {
				if c.GetKey() == jtiA {
					n += c.GetUses()
				}
			}
			if n != tt.want {
				t.Errorf("requests of the token after the restart: %d (uses %v), want %d", n, useIDs(it), tt.want)
			}
		})
	}
}
