package correlate

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

var t0 = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)

// later is the aggregator's clock for the tests whose event times all lie
// before it: no event of theirs is ahead of it.
var later = t0.Add(100 * 24 * time.Hour)

func at(m float64) time.Time { return t0.Add(time.Duration(m * float64(time.Minute))) }

func defaults() Config {
	return Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2, ServiceAccounts: 5}
}

var seq int

func mint(min float64, cluster, user, ip, ns, name string) Event {
	seq++
	return Event{Time: at(min), Cluster: cluster, User: user, SourceIP: ip, Namespace: ns, Name: name, AuditID: fmt.Sprintf("id-%d", seq)}
}

// summary is what a scenario asserts about a record.
type summary struct {
	Kind, Key string
	Clusters  []string
	SAs       []string
	Time      time.Time
}

func summarize(recs []alert.Record) []summary {
	var out []summary
	for _, r := range recs {
		kind, _ := r.Attr("tokenwatch.correlation.kind")
		key, ok := r.Attr("user.name")
		if !ok {
			key, _ = r.Attr("source.ip")
		}
		cl, _ := r.Attr("k8s.cluster.names")
		sa, _ := r.Attr("tokenwatch.service_accounts")
		out = append(out, summary{kind.Str, key.Str, cl.Strings, sa.Strings, r.Time})
	}
	return out
}

func TestScenarios(t *testing.T) {
	const ip = "198.51.100.7"
	tests := []struct {
		name   string
		cfg    Config
		events []Event
		want   [][]summary // per event
		late   int64
	}{
		{
			name:   "actor in two clusters",
			cfg:    defaults(),
			events: []Event{mint(0, "a", "alice", "127.0.0.1", "ns", "x"), mint(1, "b", "alice", "127.0.0.1", "ns", "x")},
			want:   [][]summary{nil, {{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(1)}}},
		},
		{
			name:   "two clusters further apart than the window",
			cfg:    defaults(),
			events: []Event{mint(0, "a", "alice", "", "ns", "x"), mint(10.5, "b", "alice", "", "ns", "x")},
			want:   [][]summary{nil, nil},
		},
		{
			name:   "exactly one window apart counts",
			cfg:    defaults(),
			events: []Event{mint(0, "a", "alice", "", "ns", "x"), mint(10, "b", "alice", "", "ns", "x")},
			want:   [][]summary{nil, {{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(10)}}},
		},
		{
			name: "out of order across clusters",
			cfg:  defaults(),
			events: []Event{
				mint(5, "b", "alice", "", "ns", "x"),
				mint(0, "a", "alice", "", "ns", "x"), // a's first event: nothing newer from a
			},
			want: [][]summary{nil, {{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(5)}}},
		},
		{
			name: "late within lateness",
			cfg:  defaults(),
			events: []Event{
				mint(8, "a", "bob", "", "ns", "y"),
				mint(0.5, "b", "alice", "", "ns", "x"),
				mint(4, "a", "alice", "", "ns", "x"), // 4m behind a's newest: accepted
			},
			want: [][]summary{nil, nil, {{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(4)}}},
		},
		{
			name: "late beyond lateness",
			cfg:  defaults(),
			events: []Event{
				mint(20, "a", "bob", "", "ns", "y"),
				mint(1, "b", "alice", "", "ns", "x"),
				mint(0, "a", "alice", "", "ns", "x"), // 20m behind a's newest: dropped
			},
			want: [][]summary{nil, nil, nil},
			late: 1,
		},
		{
			name: "suppressed for one window, then again",
			cfg:  defaults(),
			events: []Event{
				mint(0, "a", "alice", "", "ns", "x"),
				mint(1, "b", "alice", "", "ns", "x"),
				mint(2, "c", "alice", "", "ns", "x"), // same key within a window: suppressed
				mint(10.5, "b", "alice", "", "ns", "x"),
				mint(11.5, "a", "alice", "", "ns", "x"), // 10.5m after the last record: emitted
			},
			want: [][]summary{nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(1)}},
				nil, nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b", "c"}, []string{"a/ns/x", "b/ns/x", "c/ns/x"}, at(11.5)}},
			},
		},
		{
			name: "token spray",
			cfg:  defaults(),
			events: []Event{
				mint(0, "a", "mallory", "", "n1", "s1"),
				mint(1, "a", "mallory", "", "n1", "s1"), // the same target again
				mint(2, "a", "mallory", "", "n1", "s2"),
				mint(3, "a", "mallory", "", "n2", "s1"),
				mint(4, "a", "mallory", "", "n2", "s2"),
				mint(5, "a", "mallory", "", "n3", "s1"),
			},
			want: [][]summary{nil, nil, nil, nil, nil,
				{{KindTokenSpray, "mallory", []string{"a"}, []string{"a/n1/s1", "a/n1/s2", "a/n2/s1", "a/n2/s2", "a/n3/s1"}, at(5)}}},
		},
		{
			name: "spray targets in other clusters are distinct",
			cfg:  Config{Window: 10 * time.Minute, Lateness: time.Minute, Clusters: 0, ServiceAccounts: 2},
			events: []Event{
				mint(0, "a", "mallory", "", "n", "s"),
				mint(1, "b", "mallory", "", "n", "s"),
			},
			want: [][]summary{nil, {{KindTokenSpray, "mallory", []string{"a", "b"}, []string{"a/n/s", "b/n/s"}, at(1)}}},
		},
		{
			name: "source in two clusters, both kinds",
			cfg:  defaults(),
			events: []Event{
				mint(0, "a", "alice", ip, "ns", "x"),
				mint(1, "b", "carol", ip, "ns", "x"),
				mint(2, "b", "alice", ip, "ns", "x"),
			},
			want: [][]summary{nil,
				{{KindMultiClusterSource, ip, []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(1)}},
				{{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(2)}},
			},
		},
		{
			name: "loopback and link-local sources are not correlated",
			cfg:  Config{Window: 10 * time.Minute, Lateness: time.Minute, Clusters: 2, ServiceAccounts: 0},
			events: []Event{
				mint(0, "a", "u1", "127.0.0.1", "ns", "x"), mint(0, "b", "u2", "127.0.0.1", "ns", "x"),
				mint(0, "a", "u3", "::1", "ns", "x"), mint(0, "b", "u4", "::1", "ns", "x"),
				mint(0, "a", "u5", "169.254.1.1", "ns", "x"), mint(0, "b", "u6", "169.254.1.1", "ns", "x"),
				mint(0, "a", "u7", "fe80::1", "ns", "x"), mint(0, "b", "u8", "fe80::1", "ns", "x"),
				mint(0, "a", "u9", "::ffff:127.0.0.1", "ns", "x"), mint(0, "b", "u10", "::ffff:127.0.0.1", "ns", "x"),
				mint(0, "a", "u11", "not-an-ip", "ns", "x"), mint(0, "b", "u12", "not-an-ip", "ns", "x"),
			},
			want: make([][]summary, 12),
		},
		{
			name: "ignored users only leave the user-keyed kinds",
			cfg:  Config{Window: 10 * time.Minute, Lateness: time.Minute, Clusters: 2, ServiceAccounts: 2, IgnoreUsers: []string{"ci-bot"}},
			events: []Event{
				mint(0, "a", "ci-bot", ip, "n", "s1"),
				mint(1, "b", "ci-bot", ip, "n", "s2"),
			},
			want: [][]summary{nil, {{KindMultiClusterSource, ip, []string{"a", "b"}, []string{"a/n/s1", "b/n/s2"}, at(1)}}},
		},
		{
			name: "three clusters needed",
			cfg:  Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 3},
			events: []Event{
				mint(0, "a", "alice", "", "ns", "x"),
				mint(1, "b", "alice", "", "ns", "x"),
				mint(2, "a", "alice", "", "ns", "y"),
				mint(3, "c", "alice", "", "ns", "z"),
			},
			want: [][]summary{nil, nil, nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b", "c"}, []string{"a/ns/x", "a/ns/y", "b/ns/x", "c/ns/z"}, at(3)}}},
		},
		{
			name: "event late in its cluster completes a window",
			cfg:  Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2},
			events: []Event{
				mint(10, "a", "alice", "", "ns", "x"),
				mint(20, "b", "carol", "", "ns", "x"),
				mint(15, "b", "alice", "", "ns", "w"), // 5m behind b's newest: still accepted
			},
			want: [][]summary{nil, nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/w"}, at(15)}}},
		},
		{
			name: "out-of-order event bridges two clusters",
			cfg:  Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2},
			events: []Event{
				mint(0, "a", "alice", "", "ns", "x"),
				mint(14, "b", "alice", "", "ns", "x"),
				mint(9, "a", "alice", "", "ns", "y"), // 9m: in the window of b's 14m
			},
			want: [][]summary{nil, nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/y", "b/ns/x"}, at(14)}}},
		},
		{
			// Under the old rule (suppressed only within one window of
			// the last record, either way) c's events at 1 and 12 each
			// emitted, and the one at 21.5 was then suppressed.
			name: "cluster lagging more than a window does not re-trigger",
			cfg:  Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2},
			events: []Event{
				mint(0, "a", "alice", "", "ns", "x"),
				mint(0.5, "b", "alice", "", "ns", "x"),
				mint(11, "a", "alice", "", "ns", "x"),
				mint(11.5, "b", "alice", "", "ns", "x"), // 11 after the first record
				mint(1, "c", "alice", "", "ns", "x"),    // c catches up from 1: a crossing ending 10.5 before the last record
				mint(12, "c", "alice", "", "ns", "x"),   // within a window after the last record
				mint(21, "a", "alice", "", "ns", "x"),   // 9.5 after it: suppressed
				mint(21.5, "c", "alice", "", "ns", "x"), // 10 after it: emitted
				mint(6, "c", "alice", "", "ns", "y"),    // 15.5 behind c's newest: late
			},
			want: [][]summary{nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(0.5)}},
				nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b"}, []string{"a/ns/x", "b/ns/x"}, at(11.5)}},
				nil, nil, nil,
				{{KindMultiClusterActor, "alice", []string{"a", "b", "c"}, []string{"a/ns/x", "b/ns/x", "c/ns/x"}, at(21.5)}},
				nil,
			},
			late: 1,
		},
		{
			name:   "no user",
			cfg:    defaults(),
			events: []Event{mint(0, "a", "", "", "ns", "x"), mint(1, "b", "", "", "ns", "x")},
			want:   [][]summary{nil, nil},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(tt.cfg)
			for i, ev := range tt.events {
				got := summarize(c.Observe(later, ev))
				if diff := cmp.Diff(tt.want[i], got); diff != "" {
					t.Errorf("Observe(#%d %s %s at %v) (-want +got):\n%s", i, ev.Cluster, ev.User, ev.Time.Sub(t0), diff)
				}
			}
			if got := c.Stats().Late; got != tt.late {
				t.Errorf("Stats().Late = %d, want %d", got, tt.late)
			}
		})
	}
}

func TestRecord(t *testing.T) {
	c := New(defaults())
	a := Event{Time: at(0), Cluster: "a", User: "alice", SourceIP: "10.1.1.1", Namespace: "ns", Name: "x", AuditID: "A"}
	b := Event{Time: at(1).Add(123456 * time.Nanosecond), Cluster: "b", User: "alice", SourceIP: "10.2.2.2", Namespace: "ns", Name: "y", AuditID: "B"}
	c.Observe(later, a)
	recs := c.Observe(later, b)
	if len(recs) != 1 {
		t.Fatalf("Observe = %d records, want 1", len(recs))
	}
	r := recs[0]
	want := alert.Record{
		ID:        r.ID,
		EventName: alert.EventCorrelation,
		Time:      b.Time,
		Severity:  alert.High,
		Body:      "alice minted tokens in 2 clusters (a, b) within 10m0s.",
		Attrs: []alert.Attr{
			alert.String("tokenwatch.correlation.kind", KindMultiClusterActor),
			alert.String("user.name", "alice"),
			alert.Strings("k8s.cluster.names", []string{"a", "b"}),
			alert.Strings("kubernetes.audit.auditIDs", []string{"A", "B"}),
			alert.Strings("tokenwatch.service_accounts", []string{"a/ns/x", "b/ns/y"}),
			alert.String("tokenwatch.window.start", "2026-11-26T23:00:00Z"),
			alert.String("tokenwatch.window.end", "2026-11-26T23:01:00.000123456Z"),
			alert.Int("tokenwatch.correlation.events", 2),
			alert.Int("tokenwatch.correlation.distinct", 2),
		},
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("record (-want +got):\n%s", diff)
	}

	// A retried batch re-creates the same record; a fresh correlator (after
	// a restart) fed the same events in another order does too.
	again := c.Observe(later, b)
	if len(again) != 1 || again[0].ID != r.ID {
		t.Errorf("Observe(same event) = %v, want the record %s again", summarize(again), r.ID)
	}
	if again := c.Observe(later, a); len(again) != 1 || again[0].ID != r.ID {
		t.Errorf("Observe(same first event) = %v, want the record %s again", summarize(again), r.ID)
	}
	fresh := New(defaults())
	fresh.Observe(later, b)
	if recs := fresh.Observe(later, a); len(recs) != 1 || recs[0].ID != r.ID {
		t.Errorf("after restart: %v, want ID %s", summarize(recs), r.ID)
	}
}

func TestExpire(t *testing.T) {
	c := New(defaults())
	c.Observe(later, mint(0, "a", "alice", "", "ns", "x"))
	c.Observe(later, mint(30, "c", "bob", "", "ns", "x"))
	c.Expire(at(30)) // alice's event is 30m old: more than window+lateness
	if recs := c.Observe(later, mint(1, "b", "alice", "", "ns", "x")); len(recs) != 0 {
		t.Errorf("expired state still correlated: %v", summarize(recs))
	}
	if n := len(c.series); n != 4 { // bob's two, alice's two (re-created)
		t.Errorf("series = %d, want 4", n)
	}
}

// TestExpireReplay: replaying day-old logs is not expired by the wall clock.
func TestExpireReplay(t *testing.T) {
	c := New(defaults())
	c.Observe(later, mint(0, "a", "alice", "", "ns", "x"))
	c.Expire(at(24 * 60))
	if recs := c.Observe(later, mint(1, "b", "alice", "", "ns", "x")); len(recs) != 1 {
		t.Errorf("replayed events did not correlate after Expire(wall clock): %v", summarize(recs))
	}
}

func TestSeriesBounded(t *testing.T) {
	c := New(Config{Window: time.Hour, Lateness: time.Hour, Clusters: 0, ServiceAccounts: maxPerSeries + 100})
	for i := 0; i < maxPerSeries+10; i++ {
		c.Observe(later, Event{Time: t0.Add(time.Duration(i) * time.Millisecond), Cluster: "a", User: "u", Name: fmt.Sprint(i), AuditID: fmt.Sprint(i)})
	}
	if got, want := c.Stats().Evicted, int64(maxPerSeries/10); got != want {
		t.Errorf("Evicted = %d, want %d", got, want)
	}
	if n := len(c.series[seriesKey{KindTokenSpray, "u"}].items); n != maxPerSeries+10-maxPerSeries/10 {
		t.Errorf("kept %d items", n)
	}
}

func TestCorrelatable(t *testing.T) {
	for ip, want := range map[string]bool{
		"198.51.100.7": true, "10.0.0.1": true, "2001:db8::1": true, "::ffff:198.51.100.7": true,
		"127.0.0.1": false, "127.5.5.5": false, "::1": false, "169.254.169.254": false, "fe80::1": false,
		"0.0.0.0": false, "::": false, "": false, "x": false, "ff02::1": false,
	} {
		if got := Correlatable(ip); got != want {
			t.Errorf("Correlatable(%q) = %v, want %v", ip, got, want)
		}
	}
}

// TestLaggingClusterBounded: 3,000 events of the hot key one second apart
// (50 minutes of event time), one of its three clusters 12 minutes (more
// than a window) behind the others. Each kind emits at its first crossing
// and then once per window of event time, as for the same events in order:
// 5 records per kind, 15 in all (the rule before gave 3,928).
func TestLaggingClusterBounded(t *testing.T) {
	cfg := Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2, ServiceAccounts: 5}
	times := func(order string) map[string][]time.Duration {
		c := New(cfg)
		got := map[string][]time.Duration{}
		for i, ev := range hotKey(3000, time.Second, order) {
			for _, r := range c.Observe(later, ev) {
				kind, _ := r.Attr("tokenwatch.correlation.kind")
				got[kind.Str] = append(got[kind.Str], r.Time.Sub(t0))
			}
			if i%1000 == 999 {
				c.Expire(arrival(ev))
			}
		}
		return got
	}
	m := func(min, s int) time.Duration { return time.Duration(min)*time.Minute + time.Duration(s)*time.Second }
	// The first crossings: 2 clusters at the second event, 5 service
	// accounts at the fifth (in order) or, without the lagging cluster's
	// events, at the seventh (6 s).
	cluster := []time.Duration{m(0, 1), m(10, 1), m(20, 1), m(30, 1), m(40, 1)}
	want := map[string][]time.Duration{
		KindMultiClusterActor:  cluster,
		KindMultiClusterSource: cluster,
		KindTokenSpray:         {m(0, 6), m(10, 6), m(20, 6), m(30, 6), m(40, 6)},
	}
	if diff := cmp.Diff(want, times(lagging)); diff != "" {
		t.Errorf("lagging: record times per kind (-want +got):\n%s", diff)
	}
	want[KindTokenSpray] = []time.Duration{m(0, 4), m(10, 4), m(20, 4), m(30, 4), m(40, 4)}
	if diff := cmp.Diff(want, times(inOrder)); diff != "" {
		t.Errorf("in order: record times per kind (-want +got):\n%s", diff)
	}
}

// TestIncrementalMatchesBruteForce drives random, partly out-of-order
// token_spray traffic and checks every Observe against a brute-force
// evaluation of the same windows, and the incremental counts against a
// recount.
func TestIncrementalMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cfg := Config{Window: 10 * time.Minute, Lateness: 30 * time.Minute, ServiceAccounts: 4}
	c := New(cfg)
	k := seriesKey{KindTokenSpray, "u"}
	var clock time.Duration
	for n := 0; n < 3000; n++ {
		clock += time.Duration(rng.IntN(90)) * time.Second
		ts := clock - time.Duration(rng.IntN(20))*time.Minute*time.Duration(rng.IntN(2)) // some arrive late
		ev := Event{Time: t0.Add(ts), Cluster: fmt.Sprint("c", rng.IntN(2)), User: "u", Name: fmt.Sprint(rng.IntN(6)), AuditID: fmt.Sprint(n)}
		if c.newest[ev.Cluster].Add(-cfg.Lateness).After(ev.Time) {
			continue
		}
		var want []string
		if s := c.series[k]; s != nil {
			want = brute(s, ev, cfg)
		} else {
			want = brute(&series{distinct: byTarget}, ev, cfg)
		}
		recs := c.Observe(later, ev)
		var got []string
		if len(recs) == 1 {
			v, _ := recs[0].Attr("kubernetes.audit.auditIDs")
			got = v.Strings
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("event %d at %v: (-brute +got):\n%s", n, ts, diff)
		}
		s := c.series[k]
		recount := map[string]int{}
		newest := s.items[len(s.items)-1].t
		for i, it := range s.items {
			if !it.t.Before(newest.Add(-cfg.Window)) {
				recount[byTarget(it)]++
				if i < s.head {
					t.Fatalf("event %d: item %d in the trailing window but head is %d", n, i, s.head)
				}
			} else if i >= s.head {
				t.Fatalf("event %d: item %d outside the trailing window but head is %d", n, i, s.head)
			}
		}
		if diff := cmp.Diff(recount, s.cnt); diff != "" {
			t.Fatalf("event %d: trailing counts (-recount +incremental):\n%s", n, diff)
		}
		if n%500 == 499 {
			c.Expire(t0.Add(clock))
		}
	}
}

// brute returns the sorted audit IDs of the record Observe(ev) should emit
// for s, nil for none: the windows [e-W, e] ending at each item e within W
// after ev, earliest first; the first that crosses and ends one window or
// more after the newest event of the last record.
func brute(s *series, ev Event, cfg Config) []string {
	all := append([]item(nil), s.items...)
	all = append(all, item{t: ev.Time, cluster: ev.Cluster, target: ev.Cluster + "/" + ev.Namespace + "/" + ev.Name, auditID: ev.AuditID,
		id: fmt.Sprintf("%q/%q/%s", ev.Cluster, ev.AuditID, ev.Time.UTC().Format(time.RFC3339Nano))})
	sort.Slice(all, func(i, j int) bool {
		return all[i].t.Before(all[j].t) || (all[i].t.Equal(all[j].t) && all[i].id < all[j].id)
	})
	for _, e := range all {
		if e.t.Before(ev.Time) || e.t.After(ev.Time.Add(cfg.Window)) {
			continue
		}
		var win []string
		d := map[string]bool{}
		for _, it := range all {
			if !it.t.Before(e.t.Add(-cfg.Window)) && !it.t.After(e.t) {
				win = append(win, it.auditID)
				d[byTarget(it)] = true
			}
		}
		if len(d) >= cfg.ServiceAccounts && !(!s.lastTime.IsZero() && e.t.Sub(s.lastTime) < cfg.Window) {
			sort.Strings(win)
			return win
		}
	}
	return nil
}

// TestMatchesBaseline drives random traffic of all three kinds (several
// users, sources and clusters; events slightly and far out of order, at
// equal times, retried, ahead of the clock; one cluster far behind the
// others; Expire now and then) through the correlator and
// through the baseline algorithm it replaced, and wants the same records,
// IDs included, for every event, and the same counters; and each new
// record of a key one window or more after the key's record before.
func TestMatchesBaseline(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			cfg := Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2 + rng.IntN(2), ServiceAccounts: 3 + rng.IntN(3)}
			if seed%4 == 0 {
				cfg.IgnoreUsers = []string{"u0"}
			}
			c, b := New(cfg), newBaseline(cfg)
			ips := []string{"198.51.100.7", "203.0.113.9", "127.0.0.1", ""}
			var clock time.Duration
			var seen []Event
			emitted, last := map[string]bool{}, map[seriesKey]time.Time{} // every record a window after the key's one before
			for n := 0; n < 3000; n++ {
				clock += time.Duration(rng.IntN(40)) * time.Second
				var ev Event
				switch r := rng.IntN(100); {
				case r < 5 && len(seen) > 0: // a retry
					ev = seen[rng.IntN(len(seen))]
				default:
					ts := clock
					switch {
					case r < 15 && len(seen) > 0: // the same time as the last one
						ts = seen[len(seen)-1].Time.Sub(t0)
					case r < 50: // slightly out of order
						ts -= time.Duration(rng.IntN(5000)) * time.Millisecond
					case r < 60: // far out of order, maybe late
						ts -= time.Duration(rng.IntN(25)) * time.Minute
					case r < 64: // ahead of the clock, maybe clamped
						ts += time.Duration(rng.IntN(90)) * time.Second
					case r < 65: // decades ahead: clamped
						ts += time.Duration(rng.IntN(100)) * 365 * 24 * time.Hour
					}
					ev = Event{Time: t0.Add(ts), Cluster: fmt.Sprint("c", rng.IntN(4)), User: fmt.Sprint("u", rng.IntN(3)),
						SourceIP: ips[rng.IntN(len(ips))], Namespace: "ns", Name: fmt.Sprint("sa", rng.IntN(7)), AuditID: fmt.Sprint(n)}
					if r >= 90 { // a cluster that lags the others by more than two windows
						ev.Cluster, ev.Time = "lagging", ev.Time.Add(-25*time.Minute-time.Duration(rng.IntN(30))*time.Second)
					}
					seen = append(seen, ev)
				}
				now := t0.Add(clock)
				want, got := b.Observe(now, ev), c.Observe(now, ev)
				if diff := diffRecords(want, got); diff != "" {
					t.Fatalf("event %d %+v: (-baseline +got):\n%s", n, ev, diff)
				}
				for _, r := range got {
					if emitted[r.ID] {
						continue // a retry's record again
					}
					emitted[r.ID] = true
					kind, _ := r.Attr("tokenwatch.correlation.kind")
					key, ok := r.Attr("user.name")
					if !ok {
						key, _ = r.Attr("source.ip")
					}
					k := seriesKey{kind.Str, key.Str}
					if prev, ok := last[k]; ok && r.Time.Sub(prev) < cfg.Window {
						t.Fatalf("event %d %+v: %v record at %v, less than a window after the one at %v", n, ev, k, r.Time, prev)
					}
					last[k] = r.Time
				}
				if n%200 == 199 {
					now := t0.Add(clock + time.Duration(rng.IntN(2))*time.Hour)
					b.Expire(now)
					c.Expire(now)
				}
			}
			if c.Stats() != b.Stats() {
				t.Errorf("Stats() = %+v, baseline %+v", c.Stats(), b.Stats())
			}
			if c.Stats().Clamped == 0 {
				t.Errorf("Stats().Clamped = 0: no event ahead of the clock was tried")
			}
		})
	}
}

// TestMatchesBaselineHotKey compares with the baseline on the benchmark's
// hot key in each arrival order, in order past the series bound.
func TestMatchesBaselineHotKey(t *testing.T) {
	cfg := Config{Window: 10 * time.Minute, Lateness: 5 * time.Minute, Clusters: 2, ServiceAccounts: 5}
	// The baseline costs a series' length per batched event: fewer of them.
	for _, run := range []struct {
		n     int
		step  time.Duration
		order string
	}{
		{maxPerSeries + 5000, 10 * time.Millisecond, inOrder},
		{3000, 10 * time.Millisecond, batched},
		{1800, time.Second, lagging}, // a longer step: the lag spans fewer events
	} {
		if testing.Short() && run.order != inOrder {
			run.n /= 3
		}
		t.Run(run.order, func(t *testing.T) {
			c, b := New(cfg), newBaseline(cfg)
			for i, ev := range hotKey(run.n, run.step, run.order) {
				want, got := b.Observe(later, ev), c.Observe(later, ev)
				if diff := diffRecords(want, got); diff != "" {
					t.Fatalf("%s, event %d: (-baseline +got):\n%s", run.order, i, diff)
				}
				if i%1000 == 999 {
					b.Expire(arrival(ev))
					c.Expire(arrival(ev))
				}
			}
			if c.Stats() != b.Stats() {
				t.Errorf("%s: Stats() = %+v, baseline %+v", run.order, c.Stats(), b.Stats())
			}
		})
	}
}

// diffRecords is cmp.Diff, which is slow on thousands of equal records
// with long attribute lists, after a quick reflect.DeepEqual.
func diffRecords(want, got []alert.Record) string {
	if reflect.DeepEqual(want, got) {
		return ""
	}
	return cmp.Diff(want, got)
}

// TestSkewedTimes: event times come from audit logs, which can be replayed,
// forged or written by a cluster whose clock is wrong. A time ahead of the
// aggregator's clock by more than MaxSkew counts as that bound, and the
// record says how many of its events were clamped; so one cluster's future
// dates can neither suppress a key (in any cluster) for longer than real
// events of now could, nor make its own later events late, nor keep state
// from expiring.
func TestSkewedTimes(t *testing.T) {
	y2099 := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	future := func(cluster, user, name string) Event {
		ev := mint(0, cluster, user, "", "ns", name)
		ev.Time = y2099
		return ev
	}
	type step struct {
		now     float64 // the aggregator's clock, minutes after t0
		ev      Event
		want    []summary
		clamped int64 // tokenwatch.correlation.clamped_events of the record
	}
	bound := t0.Add(MaxSkew)
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "future dates in one cluster do not suppress another's spray",
			steps: []step{
				{0, future("a", "bob", "s1"), nil, 0},
				{0, future("a", "bob", "s2"), nil, 0},
				{0, future("a", "bob", "s3"), nil, 0},
				{0, future("a", "bob", "s4"), nil, 0},
				{0, future("a", "bob", "s5"), []summary{{KindTokenSpray, "bob", []string{"a"},
					[]string{"a/ns/s1", "a/ns/s2", "a/ns/s3", "a/ns/s4", "a/ns/s5"}, bound}}, 5},
				{20, mint(20, "b", "bob", "", "ns", "s1"), nil, 0},
				{20, mint(20.1, "b", "bob", "", "ns", "s2"), nil, 0},
				{20, mint(20.2, "b", "bob", "", "ns", "s3"), nil, 0},
				{20, mint(20.3, "b", "bob", "", "ns", "s4"), nil, 0},
				{20.5, mint(20.4, "b", "bob", "", "ns", "s5"), []summary{{KindTokenSpray, "bob", []string{"b"},
					[]string{"b/ns/s1", "b/ns/s2", "b/ns/s3", "b/ns/s4", "b/ns/s5"}, at(20.4)}}, 0},
			},
		},
		{
			name: "a future date does not make its cluster's later events late",
			steps: []step{
				{0, future("a", "carol", "x"), nil, 0},
				{10, mint(10, "a", "alice", "", "ns", "x"), nil, 0},
				{11, mint(11, "b", "alice", "", "ns", "x"), []summary{{KindMultiClusterActor, "alice", []string{"a", "b"},
					[]string{"a/ns/x", "b/ns/x"}, at(11)}}, 0},
			},
		},
		{
			name: "within the bound a time is kept",
			steps: []step{
				{0, mint(0.5, "a", "alice", "", "ns", "x"), nil, 0},
				{0, mint(1, "b", "alice", "", "ns", "x"), []summary{{KindMultiClusterActor, "alice", []string{"a", "b"},
					[]string{"a/ns/x", "b/ns/x"}, at(1)}}, 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(defaults())
			var clamped int64
			for i, st := range tt.steps {
				if st.ev.Time.After(at(st.now).Add(MaxSkew)) {
					clamped++
				}
				recs := c.Observe(at(st.now), st.ev)
				if diff := cmp.Diff(st.want, summarize(recs)); diff != "" {
					t.Errorf("Observe(#%d %s %s at %v) (-want +got):\n%s", i, st.ev.Cluster, st.ev.User, st.ev.Time, diff)
				}
				for _, r := range recs {
					v, ok := r.Attr("tokenwatch.correlation.clamped_events")
					if got := v.Int; got != st.clamped || ok != (st.clamped > 0) {
						t.Errorf("Observe(#%d): clamped_events = %d (present %v), want %d", i, got, ok, st.clamped)
					}
				}
			}
			if got := c.Stats().Clamped; got != clamped {
				t.Errorf("Stats().Clamped = %d, want %d", got, clamped)
			}
			if got := c.Stats().Late; got != 0 {
				t.Errorf("Stats().Late = %d, want 0", got)
			}
			// No state holds a time beyond the clock's bound: none
			// outlives Expire by decades.
			last := tt.steps[len(tt.steps)-1]
			bound := at(last.now).Add(MaxSkew)
			for k, s := range c.series {
				if s.lastTime.After(bound) || s.items[len(s.items)-1].t.After(bound) {
					t.Errorf("series %v: last record at %v, newest item at %v, after %v", k, s.lastTime, s.items[len(s.items)-1].t, bound)
				}
			}
		})
	}
}

// TestRecordOutcomes: a record says "minted" only when every request it
// counts minted a token; denied ones and ones without an outcome make it an
// attempt, and the body says how many of each.
func TestRecordOutcomes(t *testing.T) {
	spray := func(outcomes ...string) []Event {
		var evs []Event
		for i, o := range outcomes {
			e := mint(float64(i), "a", "mallory", "", "ns", fmt.Sprintf("sa-%d", i))
			e.Outcome = o
			evs = append(evs, e)
		}
		return evs
	}
	clusters := func(outcomes ...string) []Event {
		var evs []Event
		for i, o := range outcomes {
			e := mint(float64(i), fmt.Sprintf("c%d", i), "alice", "203.0.113.9", "ns", "x")
			e.Outcome = o
			evs = append(evs, e)
		}
		return evs
	}
	tests := []struct {
		name     string
		give     []Event
		kind     string
		want     string
		failures int64
	}{
		{"spray, all minted", spray("success", "success", "success", "success", "success"), KindTokenSpray,
			"mallory minted tokens for 5 service accounts within 10m0s (2026-11-26T23:00:00Z to 2026-11-26T23:04:00Z).", 0},
		{"spray, 3 of 5 denied", spray("failure", "success", "failure", "success", "failure"), KindTokenSpray,
			"mallory attempted to mint tokens for 5 service accounts within 10m0s (2026-11-26T23:00:00Z to 2026-11-26T23:04:00Z; 3 of 5 requests denied).", 3},
		{"spray, denied and unknown", spray("failure", "unknown", "success", "success", "success"), KindTokenSpray,
			"mallory attempted to mint tokens for 5 service accounts within 10m0s (2026-11-26T23:00:00Z to 2026-11-26T23:04:00Z; 1 of 5 requests denied, 1 of 5 with outcome unknown).", 1},
		{"actor, one denied", clusters("success", "failure"), KindMultiClusterActor,
			"alice attempted to mint tokens in 2 clusters (c0, c1) within 10m0s (1 of 2 requests denied).", 1},
		{"source, unknown", clusters("unknown", "success"), KindMultiClusterSource,
			"Requests from 203.0.113.9 attempted to mint tokens in 2 clusters (c0, c1) within 10m0s (1 of 2 with outcome unknown).", 0},
		{"source, all minted", clusters("success", "success"), KindMultiClusterSource,
			"Requests from 203.0.113.9 minted tokens in 2 clusters (c0, c1) within 10m0s.", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(defaults())
			var got *alert.Record
			for _, ev := range tt.give {
				for _, r := range c.Observe(later, ev) {
					if k, _ := r.Attr("tokenwatch.correlation.kind"); k.Str == tt.kind {
						got = &r
					}
				}
			}
			if got == nil {
				t.Fatalf("no %s record", tt.kind)
			}
			if got.Body != tt.want {
				t.Errorf("Body = %q, want %q", got.Body, tt.want)
			}
			f, ok := got.Attr(AttrFailures)
			if f.Int != tt.failures || ok != (tt.failures > 0) {
				t.Errorf("%s = %v (present %v), want %d", AttrFailures, f.Int, ok, tt.failures)
			}
		})
	}
}

// TestLaggingBeyondExpiry: clusters lagging more than Window+Lateness
// behind the others do not form a reported key anew once Expire has
// dropped its events: the last record still suppresses its window.
func TestLaggingBeyondExpiry(t *testing.T) {
	c := New(defaults())
	var recs []alert.Record
	recs = append(recs, c.Observe(later, mint(0, "a", "alice", "", "ns", "x"))...)
	recs = append(recs, c.Observe(later, mint(1, "b", "alice", "", "ns", "y"))...)
	if len(recs) != 1 {
		t.Fatalf("first crossing: %d records, want 1", len(recs))
	}
	// Clusters c and d were heard from at the start, then fall behind.
	c.Observe(later, mint(0, "c", "carol", "", "ns", "x"))
	c.Observe(later, mint(0, "d", "carol", "", "ns", "x"))
	// a and b go on for an hour; Expire drops alice's events.
	c.Observe(later, mint(60, "a", "bob", "", "ns", "x"))
	c.Observe(later, mint(60, "b", "bob", "", "ns", "x"))
	c.Expire(at(60))
	// c and d catch up: alice in two more clusters, inside the window
	// already reported.
	got := c.Observe(later, mint(2, "c", "alice", "", "ns", "z"))
	got = append(got, c.Observe(later, mint(3, "d", "alice", "", "ns", "w"))...)
	for _, r := range got {
		if k, _ := r.Attr("tokenwatch.correlation.kind"); k.Str == KindMultiClusterActor {
			t.Errorf("alice's multi_cluster_actor emitted again within a window of its last record: %v", summarize([]alert.Record{r}))
		}
	}
}
