package lineage

import (
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// maxTracked bounds the distinct values a usage keeps per field (source
// IPs, clusters, verbs, codes); further ones are counted in Uses only, and
// the ".count" of an array is then a lower bound.
const maxTracked = 1000

// usage accumulates the uses of one token, or of one legacy service
// account in one cluster, in one summary interval.
type usage struct {
	Start     time.Time         `json:"start"` // the interval's start
	Uses      uint64            `json:"uses"`
	SourceIPs map[string]bool   `json:"source_ips,omitempty"`
	Clusters  map[string]bool   `json:"clusters,omitempty"`
	Verbs     map[string]uint64 `json:"verbs,omitempty"`
	Codes     map[string]uint64 `json:"codes,omitempty"`
	First     time.Time         `json:"first"`
	Last      time.Time         `json:"last"`
	User      string            `json:"user,omitempty"`
}

func newUsage(start time.Time) *usage {
	u := &usage{Start: start}
	u.init()
	return u
}

// init makes u's maps (a decoded usage may lack empty ones).
func (u *usage) init() {
	if u.SourceIPs == nil {
		u.SourceIPs = map[string]bool{}
	}
	if u.Clusters == nil {
		u.Clusters = map[string]bool{}
	}
	if u.Verbs == nil {
		u.Verbs = map[string]uint64{}
	}
	if u.Codes == nil {
		u.Codes = map[string]uint64{}
	}
}

// intervalStart returns the start of the summary interval holding now:
// intervals are aligned to multiples of iv since the Unix epoch.
func intervalStart(now time.Time, iv time.Duration) time.Time {
	ns := now.UnixNano()
	r := ns % int64(iv)
	if r < 0 {
		r += int64(iv)
	}
	return time.Unix(0, ns-r).UTC()
}

func addSet(m map[string]bool, k string) {
	if k != "" && (m[k] || len(m) < maxTracked) {
		m[k] = true
	}
}

func addCount(m map[string]uint64, k string, n uint64) {
	if _, ok := m[k]; ok || len(m) < maxTracked {
		m[k] += n
	}
}

// seen widens [First, Last] to t; a zero t is unknown.
func (u *usage) seen(t time.Time) {
	if t.IsZero() {
		return
	}
	if u.First.IsZero() || t.Before(u.First) {
		u.First = t
	}
	if t.After(u.Last) {
		u.Last = t
	}
}

// addEvent counts one request read in cluster.
func (u *usage) addEvent(cluster string, e *audit.Event) {
	u.Uses++
	addSet(u.SourceIPs, e.SourceIP())
	addSet(u.Clusters, cluster)
	addCount(u.Verbs, VerbKey(e), 1)
	addCount(u.Codes, CodeKey(e), 1)
	u.seen(detect.Time(e))
	if n := e.Username(); n != "" {
		u.User = n
	}
}

// addCount adds an agent's count, read in cluster.
func (u *usage) addCount(cluster string, c *Count) {
	u.Uses += c.Uses
	for _, ip := range c.SourceIPs {
		addSet(u.SourceIPs, ip)
	}
	addSet(u.Clusters, cluster)
	for _, k := range sortedSet(c.Verbs) {
		addCount(u.Verbs, k, c.Verbs[k])
	}
	for _, k := range sortedSet(c.Codes) {
		addCount(u.Codes, k, c.Codes[k])
	}
	u.seen(c.First)
	u.seen(c.Last)
	if c.User != "" {
		u.User = c.User
	}
}

// attrs are the usage's summary attributes.
func (u *usage) attrs(iv time.Duration) []alert.Attr {
	a := []alert.Attr{alert.Int("tokenwatch.lineage.uses", int64(min(u.Uses, 1<<63-1)))}
	a = append(a, arrayAttrs("tokenwatch.lineage.source_ips", sortedSet(u.SourceIPs))...)
	a = append(a, arrayAttrs("tokenwatch.lineage.verbs", countList(u.Verbs))...)
	a = append(a, arrayAttrs("tokenwatch.lineage.outcomes", countList(u.Codes))...)
	if !u.First.IsZero() {
		a = append(a,
			alert.String("tokenwatch.lineage.first_use", rfc3339(u.First)),
			alert.String("tokenwatch.lineage.last_use", rfc3339(u.Last)))
	}
	return append(a,
		alert.String("tokenwatch.lineage.interval.start", rfc3339(u.Start)),
		alert.String("tokenwatch.lineage.interval.end", rfc3339(u.Start.Add(iv))))
}
