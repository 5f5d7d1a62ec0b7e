package correlate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// Kinds (tokenwatch.correlation.kind).
const (
	KindMultiClusterActor  = "multi_cluster_actor"
	KindTokenSpray         = "token_spray"
	KindMultiClusterSource = "multi_cluster_source"
)

// MaxListed caps each array attribute of a record; the counts say how many
// there were in all.
const MaxListed = 1000

// AttrClampedEvents counts the events of a record whose time was more than
// MaxSkew ahead of the aggregator's clock and counted at that bound.
const AttrClampedEvents = "tokenwatch.correlation.clamped_events"

// MaxSkew is how far ahead of the aggregator's clock an event time may be
// and still count as it is for correlation.
const MaxSkew = time.Minute

// maxPerSeries bounds the events kept per (kind, key): the oldest go first,
// a tenth at a time.
const maxPerSeries = 20000

// Config tunes the correlator (the configuration file's correlation section).
type Config struct {
	// Window is the length of the sliding event-time window.
	Window time.Duration `yaml:"window"`
	// Lateness is how far behind the newest event of its cluster an event
	// may arrive and still count.
	Lateness time.Duration `yaml:"lateness"`
	// Clusters is the threshold of multi_cluster_actor and
	// multi_cluster_source; <= 0 turns them off.
	Clusters int `yaml:"clusters"`
	// ServiceAccounts is the threshold of token_spray; <= 0 turns it off.
	ServiceAccounts int `yaml:"service_accounts"`
	// IgnoreUsers are user names never correlated by the user-keyed kinds.
	IgnoreUsers []string `yaml:"ignore_users"`
}

// Event is one alerting token request (failures, dry runs and budget-held
// ones included).
type Event struct {
	Time      time.Time // requestReceivedTimestamp
	Cluster   string
	User      string // user.name
	SourceIP  string // source.ip: the last sourceIPs entry
	Namespace string // target service account
	Name      string
	AuditID   string
	// Outcome is the request's event.outcome: detect.OutcomeFailure
	// (denied) and detect.OutcomeUnknown make a record say "attempted",
	// not "minted"; anything else counts as minted.
	Outcome string
}

// AttrFailures counts the events of a record whose request was denied
// (event.outcome=failure).
const AttrFailures = "tokenwatch.correlation.failures"

// Stats counts what the correlator did not use.
type Stats struct {
	// Late counts events more than Lateness behind the newest event of
	// their cluster (or without a time): dropped.
	Late int64
	// Evicted counts events dropped because a series was full.
	Evicted int64
	// Clamped counts events more than MaxSkew ahead of the aggregator's
	// clock, counted at that bound.
	Clamped int64
}

// Correlator holds the windows. It is not safe for concurrent use.
//
// Observe costs amortized O(1) per series for an event in order; O(1) also
// when the key has too few distinct values in all or all the windows the
// event could complete are suppressed; for one out of order inside the
// trailing window, the items between it and the newest one (not a
// window's worth); for one further back, the items before it and those
// of its windows that end one window or more after the last record.
type Correlator struct {
	cfg       Config
	ignore    map[string]bool
	newest    map[string]time.Time // per cluster
	newestAll time.Time
	series    map[seriesKey]*series
	stats     Stats
}

type seriesKey struct{ kind, key string }

type series struct {
	distinct func(item) string
	items    []item // by time, then id: buf[off:off+len(items)]
	// buf holds items with room on both sides, so that an event far out
	// of order (a cluster minutes behind the others) shifts the items
	// before it, not the whole series.
	buf []item
	off int
	ids map[string]bool
	// cnt counts the distinct values of items[head:], the trailing window
	// [newest-Window, newest] of the newest item, kept incrementally so
	// that in-order events cost O(1).
	cnt  map[string]int
	head int
	// all counts the distinct values of all items: when fewer than the
	// threshold, no window can cross.
	all map[string]int
	// last is the most recent record emitted, with what it covered, for
	// a retried event; Expire forgets it.
	last      *alert.Record
	lastCover map[string]bool
	// lastTime is the newest event of the last record emitted, zero for
	// none. Records are emitted only for windows ending one window or
	// more after it, so it only moves forward; Expire keeps it as long as
	// the series is kept.
	lastTime time.Time
}

type item struct {
	t       time.Time
	id      string // the request: cluster, auditID, time
	cluster string
	target  string // cluster/namespace/name
	auditID string
	clamped bool   // t is now+MaxSkew, the event's own time was later
	outcome string // event.outcome
}

// New returns a correlator for cfg.
func New(cfg Config) *Correlator {
	c := &Correlator{
		cfg:    cfg,
		ignore: map[string]bool{},
		newest: map[string]time.Time{},
		series: map[seriesKey]*series{},
	}
	for _, u := range cfg.IgnoreUsers {
		c.ignore[u] = true
	}
	return c
}

// Stats returns the counters.
func (c *Correlator) Stats() Stats { return c.stats }

// Observe counts ev and returns the tokenwatch.correlation records of keys
// that cross their threshold with it. now is the aggregator's clock: an
// event time more than MaxSkew ahead of it counts as now+MaxSkew (see the
// package documentation). A (kind, key) is not emitted again
// until one window length of event time has passed since its last record.
// Observing the same request again returns the records it already
// contributed to, with the same IDs (so a retried batch re-creates, never
// loses, them).
func (c *Correlator) Observe(now time.Time, ev Event) []alert.Record {
	if ev.Time.IsZero() {
		c.stats.Late++
		return nil
	}
	t, clamped := ev.Time, false
	if bound := now.Add(MaxSkew); t.After(bound) {
		t, clamped = bound, true
	}
	if n, ok := c.newest[ev.Cluster]; ok && t.Before(n.Add(-c.cfg.Lateness)) {
		c.stats.Late++
		return nil
	}
	if clamped {
		c.stats.Clamped++
	}
	if n := c.newest[ev.Cluster]; t.After(n) {
		c.newest[ev.Cluster] = t
	}
	if t.After(c.newestAll) {
		c.newestAll = t
	}
	it := item{
		t: t,
		// The request's own time, not the clamped one: a retry later
		// is the same request.
		id:      strconv.Quote(ev.Cluster) + "/" + strconv.Quote(ev.AuditID) + "/" + ev.Time.UTC().Format(time.RFC3339Nano),
		cluster: ev.Cluster,
		target:  ev.Cluster + "/" + ev.Namespace + "/" + ev.Name,
		auditID: ev.AuditID,
		clamped: clamped,
		outcome: ev.Outcome,
	}
	var out []alert.Record
	emit := func(kind, key string, threshold int, distinct func(item) string) {
		if threshold <= 0 || key == "" {
			return
		}
		if r := c.observe(seriesKey{kind, key}, it, threshold, distinct); r != nil {
			out = append(out, *r)
		}
	}
	if !c.ignore[ev.User] {
		emit(KindMultiClusterActor, ev.User, c.cfg.Clusters, byCluster)
		emit(KindTokenSpray, ev.User, c.cfg.ServiceAccounts, byTarget)
	}
	if Correlatable(ev.SourceIP) {
		emit(KindMultiClusterSource, ev.SourceIP, c.cfg.Clusters, byCluster)
	}
	return out
}

func byCluster(it item) string { return it.cluster }
func byTarget(it item) string  { return it.target }

func (c *Correlator) observe(k seriesKey, it item, threshold int, distinct func(item) string) *alert.Record {
	s := c.series[k]
	if s == nil {
		s = &series{distinct: distinct, ids: map[string]bool{}, cnt: map[string]int{}, all: map[string]int{}}
		c.series[k] = s
	}
	if s.ids[it.id] {
		if s.last != nil && s.lastCover[it.id] {
			r := *s.last
			return &r
		}
		return nil
	}
	s.ids[it.id] = true
	pos := s.insert(it, c.cfg.Window)
	if len(s.items) > maxPerSeries {
		// Evict a tenth at once: the copy is amortized over many events.
		n := maxPerSeries / 10
		s.dropFront(n)
		pos -= n
		c.stats.Evicted += int64(n)
	}
	if pos < 0 {
		return nil
	}
	var win []item
	if pos == len(s.items)-1 {
		// In order: the only window to check is the trailing one.
		if len(s.cnt) >= threshold && !c.suppressed(s, it.t) {
			win = s.items[s.head:]
		}
	} else if len(s.all) >= threshold && !c.suppressedAll(s, pos) {
		win = c.sweep(s, pos, threshold)
	}
	if win == nil {
		return nil
	}
	r := c.record(k, win, distinct)
	s.last, s.lastTime = &r, win[len(win)-1].t // later than before: see suppressed
	s.lastCover = make(map[string]bool, len(win))
	for _, w := range win {
		s.lastCover[w.id] = true
	}
	return &r
}

// suppressed reports whether a record whose newest event is at newest would
// come less than one window after the newest event of the key's last
// record, or before it: an old event (a cluster catching up) cannot
// re-trigger a key.
func (c *Correlator) suppressed(s *series, newest time.Time) bool {
	return !s.lastTime.IsZero() && newest.Before(s.lastTime.Add(c.cfg.Window))
}

// suppressedAll reports whether every window an event inserted out of
// order at pos could complete, [e-Window, e] for the items e from it to one
// window after it, is suppressed by the key's last record: whether the
// latest of those ends is.
func (c *Correlator) suppressedAll(s *series, pos int) bool {
	last := s.items[len(s.items)-1].t
	if end := s.items[pos].t.Add(c.cfg.Window); end.Before(last) {
		last = end
	}
	return c.suppressed(s, last)
}

// insert adds it in order and keeps the trailing window's counts; it
// returns its index.
func (s *series) insert(it item, window time.Duration) int {
	after := func(i int) bool {
		return s.items[i].t.After(it.t) || (s.items[i].t.Equal(it.t) && s.items[i].id > it.id)
	}
	pos := len(s.items)
	if pos > 0 && after(pos-1) {
		pos = sort.Search(len(s.items), after)
	}
	if n := len(s.items); pos < n/2 && s.off > 0 {
		s.off--
		s.items = s.buf[s.off : s.off+n+1]
		copy(s.items[:pos], s.items[1:pos+1])
		s.items[pos] = it
	} else {
		if n == cap(s.items) {
			// Room for half as many again in front and behind:
			// dropFront reslices, so append's own growth would copy
			// too often.
			s.buf = make([]item, 2*n+16)
			s.off = n / 2
			s.items = s.buf[s.off : s.off+copy(s.buf[s.off:], s.items)]
		}
		s.items = slices.Insert(s.items, pos, it)
	}
	s.all[s.distinct(it)]++
	if pos == len(s.items)-1 {
		s.cnt[s.distinct(it)]++
		start := it.t.Add(-window)
		for s.items[s.head].t.Before(start) {
			s.dec(s.items[s.head])
			s.head++
		}
		return pos
	}
	if newest := s.items[len(s.items)-1].t; it.t.Before(newest.Add(-window)) {
		s.head++ // before the trailing window
	} else {
		s.cnt[s.distinct(it)]++
	}
	return pos
}

func (s *series) dec(it item) { decr(s.cnt, s.distinct(it)) }

func decr(m map[string]int, v string) {
	if m[v]--; m[v] <= 0 {
		delete(m, v)
	}
}

// dropFront removes the n oldest items. It reslices rather than copies, so
// that dropping a few items from a long series costs only those few; the
// next growth of the slice reallocates and leaves the dropped ones behind.
func (s *series) dropFront(n int) {
	if n == 0 {
		return
	}
	for i := s.head; i < n; i++ {
		s.dec(s.items[i])
	}
	for i := range s.items[:n] {
		delete(s.ids, s.items[i].id)
		decr(s.all, s.distinct(s.items[i]))
		s.items[i] = item{} // release the strings now
	}
	s.head = max(0, s.head-n)
	s.items = s.items[n:]
	s.off += n
}

// sweep checks, for an event inserted out of order at pos, the windows
// [e-Window, e] ending at each item e within one window after it (every
// window holding the event lies inside one of those), earliest first, and
// returns the first that crosses threshold and is not suppressed.
func (c *Correlator) sweep(s *series, pos, threshold int) []item {
	if pos >= s.head {
		return c.sweepBack(s, pos, threshold)
	}
	// Only ends one window or more after the last record can emit.
	t, w := s.items[pos].t, c.cfg.Window
	from := t
	if !s.lastTime.IsZero() {
		from = maxTime(t, s.lastTime.Add(w))
	}
	return c.sweepRange(s, from, t.Add(w), threshold)
}

// sweepRange checks the windows [e-Window, e] ending at the items e from
// from to to, earliest first, and returns the first that crosses threshold
// and is not suppressed.
func (c *Correlator) sweepRange(s *series, from, to time.Time, threshold int) []item {
	e0 := sort.Search(len(s.items), func(i int) bool { return !s.items[i].t.Before(from) })
	if e0 == len(s.items) || s.items[e0].t.After(to) {
		return nil
	}
	lo := sort.Search(len(s.items), func(i int) bool { return !s.items[i].t.Before(s.items[e0].t.Add(-c.cfg.Window)) })
	count := map[string]int{}
	for i := lo; i < e0; i++ {
		count[s.distinct(s.items[i])]++
	}
	for e := e0; e < len(s.items) && !s.items[e].t.After(to); e++ {
		count[s.distinct(s.items[e])]++
		if e+1 < len(s.items) && s.items[e+1].t.Equal(s.items[e].t) {
			continue // a window ends after all items of its end time
		}
		start := s.items[e].t.Add(-c.cfg.Window)
		for s.items[lo].t.Before(start) {
			v := s.distinct(s.items[lo])
			if count[v]--; count[v] == 0 {
				delete(count, v)
			}
			lo++
		}
		if len(count) >= threshold && !c.suppressed(s, s.items[e].t) {
			return s.items[lo : e+1]
		}
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// sweepBack is sweep for an event inside the trailing window, whose
// windows all end in it: it starts from the trailing window's counts and
// walks back to the event, so that it costs the items between the event
// and the newest one (and as many at the windows' start), not a window's
// worth. Walking back, the last crossing found is the earliest; the walk
// stops at the first suppressed end, as all before it are too.
func (c *Correlator) sweepBack(s *series, pos, threshold int) []item {
	delta := map[string]int{}
	distinct := len(s.cnt)
	adjust := func(it item, by int) {
		v := s.distinct(it)
		before := s.cnt[v] + delta[v]
		delta[v] += by
		switch after := before + by; {
		case before == 0 && after > 0:
			distinct++
		case before > 0 && after == 0:
			distinct--
		}
	}
	var win []item
	lo, hi := s.head, len(s.items) // the window is s.items[lo:hi]
	for e := len(s.items) - 1; e >= pos; e-- {
		if e+1 < len(s.items) && s.items[e+1].t.Equal(s.items[e].t) {
			continue // a window ends after all items of its end time
		}
		if c.suppressed(s, s.items[e].t) {
			break
		}
		for ; hi > e+1; hi-- {
			adjust(s.items[hi-1], -1)
		}
		start := s.items[e].t.Add(-c.cfg.Window)
		for ; lo > 0 && !s.items[lo-1].t.Before(start); lo-- {
			adjust(s.items[lo-1], 1)
		}
		if distinct >= threshold {
			win = s.items[lo:hi]
		}
	}
	return win
}

// Expire drops state that can no longer join a window: events older than
// Window+Lateness before now. now is capped at the newest event time seen,
// so a replay of old logs is not expired by the wall clock.
func (c *Correlator) Expire(now time.Time) {
	ref := now
	if c.newestAll.Before(ref) {
		ref = c.newestAll
	}
	cut := ref.Add(-c.cfg.Window - c.cfg.Lateness)
	keep := c.keepLastAfter()
	for k, s := range c.series {
		n := sort.Search(len(s.items), func(i int) bool { return !s.items[i].t.Before(cut) })
		s.dropFront(n)
		// A last record still suppresses while a cluster may send an
		// event less than a window after it: a cluster lagging more than
		// Window+Lateness would otherwise form the key anew.
		old := s.lastTime.Before(cut.Add(-c.cfg.Window)) && s.lastTime.Add(c.cfg.Window).Before(keep)
		if old {
			s.last, s.lastCover = nil, nil
		}
		if len(s.items) == 0 && old {
			delete(c.series, k)
		}
	}
}

// keepLastAfter returns the earliest event time any known cluster may
// still send: Lateness before the newest event of the cluster furthest
// behind.
func (c *Correlator) keepLastAfter() time.Time {
	var slowest time.Time
	for _, t := range c.newest {
		if slowest.IsZero() || t.Before(slowest) {
			slowest = t
		}
	}
	return slowest.Add(-c.cfg.Lateness)
}

func (c *Correlator) record(k seriesKey, win []item, distinct func(item) string) alert.Record {
	clusters, targets, auditIDs, ids := set{}, set{}, set{}, make([]string, 0, len(win))
	var clamped, failed, unknown int64
	for _, w := range win {
		clusters.add(w.cluster)
		targets.add(w.target)
		auditIDs.add(w.auditID)
		ids = append(ids, w.id)
		if w.clamped {
			clamped++
		}
		switch w.outcome {
		case detect.OutcomeFailure:
			failed++
		case detect.OutcomeUnknown:
			unknown++
		}
	}
	sort.Strings(ids)
	sum := sha256.Sum256([]byte(k.kind + "\x00" + k.key + "\x00" + strings.Join(ids, "\x00")))
	start, end := win[0].t.UTC(), win[len(win)-1].t.UTC()
	keyAttr := "user.name"
	if k.kind == KindMultiClusterSource {
		keyAttr = "source.ip"
	}
	n := len(set{}.fill(win, distinct))
	verb, note := outcomeNote(failed, unknown, len(win))
	var body string
	switch k.kind {
	case KindTokenSpray:
		span := start.Format(time.RFC3339) + " to " + end.Format(time.RFC3339)
		if note != "" {
			span += "; " + note
		}
		body = fmt.Sprintf("%s %s tokens for %d service accounts within %s (%s).", k.key, verb, n, c.cfg.Window, span)
	default:
		who := k.key
		if k.kind == KindMultiClusterSource {
			who = "Requests from " + k.key
		}
		if note != "" {
			note = " (" + note + ")"
		}
		body = fmt.Sprintf("%s %s tokens in %d clusters (%s) within %s%s.", who, verb, n, strings.Join(clusters.sorted(MaxListed), ", "), c.cfg.Window, note)
	}
	r := alert.Record{
		ID:        "co-" + hex.EncodeToString(sum[:16]),
		EventName: alert.EventCorrelation,
		Time:      end,
		Severity:  alert.High,
		Body:      body,
		Attrs: []alert.Attr{
			alert.String("tokenwatch.correlation.kind", k.kind),
			alert.String(keyAttr, k.key),
			alert.Strings("k8s.cluster.names", clusters.sorted(MaxListed)),
			alert.Strings("kubernetes.audit.auditIDs", auditIDs.sorted(MaxListed)),
			alert.Strings("tokenwatch.service_accounts", targets.sorted(MaxListed)),
			alert.String("tokenwatch.window.start", start.Format(time.RFC3339Nano)),
			alert.String("tokenwatch.window.end", end.Format(time.RFC3339Nano)),
			alert.Int("tokenwatch.correlation.events", int64(len(win))),
			alert.Int("tokenwatch.correlation.distinct", int64(n)),
		},
	}
	if clamped > 0 {
		r.Attrs = append(r.Attrs, alert.Int(AttrClampedEvents, clamped))
	}
	if failed > 0 {
		r.Attrs = append(r.Attrs, alert.Int(AttrFailures, failed))
	}
	return r
}

// outcomeNote is the verb of a correlation's body and a note on its
// requests: "minted" only when every request did; denied ones and those
// without an outcome were attempts, and the note says how many.
func outcomeNote(failed, unknown int64, total int) (verb, note string) {
	if failed+unknown == 0 {
		return "minted", ""
	}
	var parts []string
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d requests denied", failed, total))
	}
	if unknown > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d with outcome unknown", unknown, total))
	}
	return "attempted to mint", strings.Join(parts, ", ")
}

type set map[string]struct{}

func (s set) add(v string) { s[v] = struct{}{} }

func (s set) fill(win []item, f func(item) string) set {
	for _, w := range win {
		s.add(f(w))
	}
	return s
}

func (s set) sorted(limit int) []string {
	out := make([]string, 0, len(s))
	for v := range s {
		out = append(out, v)
	}
	sort.Strings(out)
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Correlatable reports whether ip may key multi_cluster_source: a valid
// address that is not loopback, link-local or unspecified.
func Correlatable(ip string) bool {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	addr = addr.Unmap()
	return !addr.IsLoopback() && !addr.IsLinkLocalUnicast() && !addr.IsLinkLocalMulticast() && !addr.IsUnspecified()
}
