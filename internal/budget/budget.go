package budget

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// MaxAuditIDs caps the audit IDs listed in a summary.
const MaxAuditIDs = 1000

// maxUsers caps the users listed in a summary (the count covers all).
const maxUsers = 1000

// Config is the configuration file's budget section. MaxAlerts 0 (or less)
// admits everything.
type Config struct {
	MaxAlerts int           `yaml:"max_alerts"`
	Window    time.Duration `yaml:"window"`
}

// Budget counts alerts in tumbling windows aligned to multiples of Window
// (on the aggregator's clock). It is not safe for concurrent use.
type Budget struct {
	cfg   Config
	cur   window
	ended []alert.Record // summaries of ended windows not yet flushed
}

type window struct {
	start, end time.Time
	admitted   int
	held       int
	lineage    int // of held: lineage records (AdmitLineage)
	users      map[string]int
	auditIDs   []string
}

// New returns a budget for cfg.
func New(cfg Config) *Budget { return &Budget{cfg: cfg} }

// Admit reports whether an alert of user (audit ID auditID) may be emitted
// at now; false means it is held back and counted in the window's summary.
func (b *Budget) Admit(now time.Time, user, auditID string) bool {
	return b.admit(now, user, auditID, false)
}

// AdmitLineage is Admit for a lineage record (a token use, a follow-up, a
// summary): the window's summary counts it as such. id is its request's
// audit ID, or the record's ID when it has none.
func (b *Budget) AdmitLineage(now time.Time, user, id string) bool {
	return b.admit(now, user, id, true)
}

func (b *Budget) admit(now time.Time, user, auditID string, lineage bool) bool {
	if b.cfg.MaxAlerts <= 0 || b.cfg.Window <= 0 {
		return true
	}
	b.roll(now)
	if b.cur.admitted < b.cfg.MaxAlerts {
		b.cur.admitted++
		return true
	}
	b.cur.held++
	if lineage {
		b.cur.lineage++
	}
	if b.cur.users == nil {
		b.cur.users = map[string]int{}
	}
	b.cur.users[user]++
	if len(b.cur.auditIDs) < MaxAuditIDs {
		b.cur.auditIDs = append(b.cur.auditIDs, auditID)
	}
	return false
}

// roll starts the window holding now, keeping the summary of the one that
// ended. A clock that steps back stays in the current window.
func (b *Budget) roll(now time.Time) {
	if !b.cur.start.IsZero() && now.Before(b.cur.end) {
		return
	}
	b.closeCurrent(b.cur.end)
	start := now.Truncate(b.cfg.Window)
	b.cur = window{start: start, end: start.Add(b.cfg.Window)}
}

func (b *Budget) closeCurrent(at time.Time) {
	if b.cur.held > 0 {
		b.ended = append(b.ended, b.summary(b.cur, at))
	}
	b.cur.held = 0
}

// Flush returns the alerts_suppressed records of the windows that ended by
// now and held alerts back, once each.
func (b *Budget) Flush(now time.Time) []alert.Record {
	if !b.cur.start.IsZero() && !now.Before(b.cur.end) {
		b.closeCurrent(b.cur.end)
		b.cur = window{}
	}
	out := b.ended
	b.ended = nil
	return out
}

// Close ends the current window at now, cut short (a configuration change or
// shutdown), and returns every summary not yet flushed.
func (b *Budget) Close(now time.Time) []alert.Record {
	if !b.cur.start.IsZero() {
		end := b.cur.end
		if now.Before(end) {
			end = now
		}
		b.closeCurrent(end)
		b.cur = window{}
	}
	out := b.ended
	b.ended = nil
	return out
}

// body is the summary's text: what was held back, by whom.
func (b *Budget) body(w window, top []string) string {
	what := fmt.Sprintf("%d token request alerts", w.held)
	if w.lineage > 0 {
		what = fmt.Sprintf("%d alerts (%d token request alerts, %d lineage records)", w.held, w.held-w.lineage, w.lineage)
	}
	return fmt.Sprintf("Alert budget of %d per %s exceeded: %s held back (%s).",
		b.cfg.MaxAlerts, b.cfg.Window, what, strings.Join(top, ", "))
}

func (b *Budget) summary(w window, end time.Time) alert.Record {
	users := make([]string, 0, len(w.users))
	for u := range w.users {
		users = append(users, u)
	}
	sort.Slice(users, func(i, j int) bool {
		if w.users[users[i]] != w.users[users[j]] {
			return w.users[users[i]] > w.users[users[j]]
		}
		return users[i] < users[j]
	})
	if len(users) > maxUsers {
		users = users[:maxUsers]
	}
	pairs := make([]string, len(users))
	for i, u := range users {
		pairs[i] = fmt.Sprintf("%s=%d", u, w.users[u])
	}
	top := pairs
	if len(top) > 3 {
		top = append(top[:3:3], "...")
	}
	return alert.Record{
		ID:        alert.PipelineID("alerts_suppressed\x00" + w.start.UTC().Format(time.RFC3339Nano) + "\x00" + end.UTC().Format(time.RFC3339Nano)),
		EventName: alert.EventPipeline,
		Time:      end,
		Severity:  alert.Low,
		Body:      b.body(w, top),
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", "alerts_suppressed"),
			alert.Int("tokenwatch.suppressed.count", int64(w.held)),
			alert.Strings("tokenwatch.suppressed.users", pairs),
			alert.Strings("tokenwatch.suppressed.auditIDs", append([]string(nil), w.auditIDs...)),
			alert.String("tokenwatch.window.start", w.start.UTC().Format(time.RFC3339Nano)),
			alert.String("tokenwatch.window.end", end.UTC().Format(time.RFC3339Nano)),
			alert.Int("tokenwatch.budget.max_alerts", int64(b.cfg.MaxAlerts)),
		},
	}
}
