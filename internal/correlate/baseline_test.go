package correlate

// The correlator as it was before Observe became cheap for slightly
// out-of-order events on a hot key (commit 8fad5f7), renamed as the
// baseline of the benchmarks and as a second opinion in TestMatchesBaseline.
// Its algorithm is unchanged; only its suppression follows the rule that
// replaced "within one window of the last record, in either direction" so
// that a lagging cluster no longer floods (suppressed and Expire), and
// event times far ahead of the aggregator's clock are clamped (Observe,
// record), marked "rule:" below.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// baselineCorrelator holds the windows. It is not safe for concurrent use.
type baselineCorrelator struct {
	cfg            Config
	ignore         map[string]bool
	newest         map[string]time.Time // per cluster
	newestAll      time.Time
	baselineSeries map[baselineSeriesKey]*baselineSeries
	stats          Stats
}

type baselineSeriesKey struct{ kind, key string }

type baselineSeries struct {
	distinct func(baselineItem) string
	items    []baselineItem // by time, then id
	ids      map[string]bool
	// cnt counts the distinct values of items[head:], the trailing window
	// [newest-Window, newest] of the newest baselineItem, kept incrementally so
	// that in-order events cost O(1).
	cnt  map[string]int
	head int
	// last is the most recent record emitted, with what it covered.
	last      *alert.Record
	lastTime  time.Time
	lastCover map[string]bool
}

type baselineItem struct {
	t       time.Time
	id      string // the request: cluster, auditID, time
	cluster string
	target  string // cluster/namespace/name
	auditID string
	clamped bool
}

// New returns a correlator for cfg.
func newBaseline(cfg Config) *baselineCorrelator {
	c := &baselineCorrelator{
		cfg:            cfg,
		ignore:         map[string]bool{},
		newest:         map[string]time.Time{},
		baselineSeries: map[baselineSeriesKey]*baselineSeries{},
	}
	for _, u := range cfg.IgnoreUsers {
		c.ignore[u] = true
	}
	return c
}

// Stats returns the counters.
func (c *baselineCorrelator) Stats() Stats { return c.stats }

// Observe counts ev and returns the tokenwatch.correlation records of keys
// that cross their threshold with it. A (kind, key) is not emitted again
// until one window length of event time has passed since its last record.
// Observing the same request again returns the records it already
// contributed to, with the same IDs (so a retried batch re-creates, never
// loses, them).
//
// rule: a time more than MaxSkew ahead of now counts as now+MaxSkew.
func (c *baselineCorrelator) Observe(now time.Time, ev Event) []alert.Record {
	if ev.Time.IsZero() {
		c.stats.Late++
		return nil
	}
	t := ev.Time
	if t.After(now.Add(MaxSkew)) {
		t = now.Add(MaxSkew)
	}
	if n, ok := c.newest[ev.Cluster]; ok && t.Before(n.Add(-c.cfg.Lateness)) {
		c.stats.Late++
		return nil
	}
	if !t.Equal(ev.Time) {
		c.stats.Clamped++
	}
	if n := c.newest[ev.Cluster]; t.After(n) {
		c.newest[ev.Cluster] = t
	}
	if t.After(c.newestAll) {
		c.newestAll = t
	}
	it := baselineItem{
		t:       t,
		id:      fmt.Sprintf("%q/%q/%s", ev.Cluster, ev.AuditID, ev.Time.UTC().Format(time.RFC3339Nano)),
		cluster: ev.Cluster,
		target:  ev.Cluster + "/" + ev.Namespace + "/" + ev.Name,
		auditID: ev.AuditID,
		clamped: !t.Equal(ev.Time),
	}
	var out []alert.Record
	emit := func(kind, key string, threshold int, distinct func(baselineItem) string) {
		if threshold <= 0 || key == "" {
			return
		}
		if r := c.observe(baselineSeriesKey{kind, key}, it, threshold, distinct); r != nil {
			out = append(out, *r)
		}
	}
	if !c.ignore[ev.User] {
		emit(KindMultiClusterActor, ev.User, c.cfg.Clusters, baselineByCluster)
		emit(KindTokenSpray, ev.User, c.cfg.ServiceAccounts, baselineByTarget)
	}
	if Correlatable(ev.SourceIP) {
		emit(KindMultiClusterSource, ev.SourceIP, c.cfg.Clusters, baselineByCluster)
	}
	return out
}

func baselineByCluster(it baselineItem) string { return it.cluster }
func baselineByTarget(it baselineItem) string  { return it.target }

func (c *baselineCorrelator) observe(k baselineSeriesKey, it baselineItem, threshold int, distinct func(baselineItem) string) *alert.Record {
	s := c.baselineSeries[k]
	if s == nil {
		s = &baselineSeries{distinct: distinct, ids: map[string]bool{}, cnt: map[string]int{}}
		c.baselineSeries[k] = s
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
	var win []baselineItem
	if pos == len(s.items)-1 {
		// In order: the only window to check is the trailing one.
		if len(s.cnt) >= threshold && !c.suppressed(s, it.t) {
			win = s.items[s.head:]
		}
	} else {
		win = c.sweep(s, pos, threshold)
	}
	if win == nil {
		return nil
	}
	r := c.record(k, win, distinct)
	s.last, s.lastTime = &r, win[len(win)-1].t
	s.lastCover = make(map[string]bool, len(win))
	for _, w := range win {
		s.lastCover[w.id] = true
	}
	return &r
}

// suppressed reports whether a record whose newest event is at newest would
// come within one window of the key's last record.
//
// rule: less than one window after the last record, or before it.
func (c *baselineCorrelator) suppressed(s *baselineSeries, newest time.Time) bool {
	return !s.lastTime.IsZero() && newest.Sub(s.lastTime) < c.cfg.Window
}

// insert adds it in order and keeps the trailing window's counts; it
// returns its index.
func (s *baselineSeries) insert(it baselineItem, window time.Duration) int {
	pos := sort.Search(len(s.items), func(i int) bool {
		return s.items[i].t.After(it.t) || (s.items[i].t.Equal(it.t) && s.items[i].id > it.id)
	})
	s.items = slices.Insert(s.items, pos, it)
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

func (s *baselineSeries) dec(it baselineItem) {
	v := s.distinct(it)
	if s.cnt[v]--; s.cnt[v] <= 0 {
		delete(s.cnt, v)
	}
}

// dropFront removes the n oldest items.
func (s *baselineSeries) dropFront(n int) {
	for i := s.head; i < n; i++ {
		s.dec(s.items[i])
	}
	for _, it := range s.items[:n] {
		delete(s.ids, it.id)
	}
	s.head = max(0, s.head-n)
	s.items = slices.Delete(s.items, 0, n)
}

// sweep checks, for an event inserted out of order at pos, the windows
// [e-Window, e] ending at each baselineItem e within one window after it (every
// window holding the event lies inside one of those), earliest first, and
// returns the first that crosses threshold and is not suppressed.
func (c *baselineCorrelator) sweep(s *baselineSeries, pos, threshold int) []baselineItem {
	t := s.items[pos].t
	lo := sort.Search(len(s.items), func(i int) bool { return !s.items[i].t.Before(t.Add(-c.cfg.Window)) })
	count := map[string]int{}
	for i := lo; i < pos; i++ {
		count[s.distinct(s.items[i])]++
	}
	for e := pos; e < len(s.items) && !s.items[e].t.After(t.Add(c.cfg.Window)); e++ {
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

// Expire drops state that can no longer join a window: events older than
// Window+Lateness before now. now is capped at the newest event time seen,
// so a replay of old logs is not expired by the wall clock.
func (c *baselineCorrelator) Expire(now time.Time) {
	ref := now
	if c.newestAll.Before(ref) {
		ref = c.newestAll
	}
	cut := ref.Add(-c.cfg.Window - c.cfg.Lateness)
	// rule: a last record is kept while the cluster furthest behind may
	// still send an event less than a window after it.
	var slowest time.Time
	for _, t := range c.newest {
		if slowest.IsZero() || t.Before(slowest) {
			slowest = t
		}
	}
	keep := slowest.Add(-c.cfg.Lateness)
	for k, s := range c.baselineSeries {
		n := sort.Search(len(s.items), func(i int) bool { return !s.items[i].t.Before(cut) })
		s.dropFront(n)
		if s.last != nil && s.lastTime.Before(cut.Add(-c.cfg.Window)) {
			s.last, s.lastCover = nil, nil // rule: lastTime is kept
		}
		if len(s.items) == 0 && s.last == nil && s.lastTime.Before(cut.Add(-c.cfg.Window)) && s.lastTime.Add(c.cfg.Window).Before(keep) {
			delete(c.baselineSeries, k)
		}
	}
}

func (c *baselineCorrelator) record(k baselineSeriesKey, win []baselineItem, distinct func(baselineItem) string) alert.Record {
	clusters, targets, auditIDs, ids := baselineSet{}, baselineSet{}, baselineSet{}, make([]string, 0, len(win))
	var clamped int64
	for _, w := range win {
		clusters.add(w.cluster)
		targets.add(w.target)
		auditIDs.add(w.auditID)
		ids = append(ids, w.id)
		if w.clamped {
			clamped++
		}
	}
	sort.Strings(ids)
	sum := sha256.Sum256([]byte(k.kind + "\x00" + k.key + "\x00" + strings.Join(ids, "\x00")))
	start, end := win[0].t.UTC(), win[len(win)-1].t.UTC()
	keyAttr := "user.name"
	if k.kind == KindMultiClusterSource {
		keyAttr = "source.ip"
	}
	n := len(baselineSet{}.fill(win, distinct))
	var body string
	switch k.kind {
	case KindTokenSpray:
		body = fmt.Sprintf("%s minted tokens for %d service accounts within %s (%s to %s).", k.key, n, c.cfg.Window, start.Format(time.RFC3339), end.Format(time.RFC3339))
	case KindMultiClusterSource:
		body = fmt.Sprintf("Requests from %s minted tokens in %d clusters (%s) within %s.", k.key, n, strings.Join(clusters.sorted(MaxListed), ", "), c.cfg.Window)
	default:
		body = fmt.Sprintf("%s minted tokens in %d clusters (%s) within %s.", k.key, n, strings.Join(clusters.sorted(MaxListed), ", "), c.cfg.Window)
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
	if clamped > 0 { // rule: the record says how many were clamped
		r.Attrs = append(r.Attrs, alert.Int(AttrClampedEvents, clamped))
	}
	return r
}

type baselineSet map[string]struct{}

func (s baselineSet) add(v string) { s[v] = struct{}{} }

func (s baselineSet) fill(win []baselineItem, f func(baselineItem) string) baselineSet {
	for _, w := range win {
		s.add(f(w))
	}
	return s
}

func (s baselineSet) sorted(limit int) []string {
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
