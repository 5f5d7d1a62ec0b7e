package lineage

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// Tick ends the summary intervals that ended by now (aggregator clock),
// emitting their token_use_summary, legacy_token_use and
// lineage_watch_full records, and frees tokens TTL + lookback, and
// minters actor_window + lookback, after the aggregator learnt of their
// mint. Natural expiry is not pushed to agents: they end watches at Until
// themselves.
func (s *State) Tick(now time.Time) Effects {
	var fx Effects
	for _, jti := range sortedSet(s.open) {
		if t := s.tokens[jti]; s.ended(t.Usage.Start, now) {
			s.emitSummary(now, t, &fx)
		}
	}
	for _, id := range sortedSet(s.legacy) {
		if s.ended(s.legacy[id].Usage.Start, now) {
			s.emitLegacy(now, id, &fx)
		}
	}
	if s.full != nil && s.ended(s.full.Start, now) {
		s.emitFull(now, &fx)
	}
	s.expire(now, &fx)
	return fx
}

// ended reports whether the interval starting at start ended by now.
func (s *State) ended(start, now time.Time) bool {
	return !now.Before(start.Add(s.cfg.SummaryInterval))
}

// recordTime is the time of a record of the interval starting at start:
// its end, or now when emitted early (a token freed or dropped).
func (s *State) recordTime(start, now time.Time) time.Time {
	if end := start.Add(s.cfg.SummaryInterval); end.Before(now) {
		return end
	}
	return now
}

// emitSummary emits t's token_use_summary and closes its usage; nothing
// is emitted while lineage is off.
func (s *State) emitSummary(now time.Time, t *token, fx *Effects) {
	u := t.Usage
	t.Usage = nil
	delete(s.open, t.Mint.JTI)
	s.touchToken(t)
	if !s.cfg.Enabled || u.Uses == 0 {
		return
	}
	a := mintAttrs(&t.Mint, t.Root, t.Depth)
	a = append(a, arrayAttrs("k8s.cluster.names", sortedSet(u.Clusters))...)
	a = append(a, u.attrs(s.cfg.SummaryInterval)...)
	fx.Records = append(fx.Records, alert.Record{
		ID:        recordID("ts-", t.Mint.JTI, rfc3339(u.Start)),
		EventName: EventTokenUseSummary,
		Time:      s.recordTime(u.Start, now),
		Severity:  alert.Low,
		Body: fmt.Sprintf("The token minted by %s for service account %s/%s in cluster %s was used %d times from %d source IPs in %s.",
			orUnknown(t.Mint.User), t.Mint.Namespace, t.Mint.Name, t.Mint.Cluster, u.Uses, len(u.SourceIPs),
			strings.Join(sortedSet(u.Clusters), ", ")),
		Attrs: a,
	})
}

// emitLegacy emits the legacy_token_use record of entry id and frees it.
func (s *State) emitLegacy(now time.Time, id string, fx *Effects) {
	l := s.legacy[id]
	delete(s.legacy, id)
	s.dirty["legacy/"+id] = true
	u := l.Usage
	if !s.cfg.Enabled || u.Uses == 0 {
		return
	}
	ns, name, _ := strings.Cut(strings.TrimPrefix(l.ServiceAccount, saPrefix), ":")
	a := []alert.Attr{
		alert.String("k8s.cluster.name", l.Cluster),
		alert.String("user.name", l.ServiceAccount),
		alert.String("tokenwatch.lineage.service_account", ns+"/"+name),
	}
	a = append(a, u.attrs(s.cfg.SummaryInterval)...)
	fx.Records = append(fx.Records, alert.Record{
		ID:        recordID("lt-", l.Cluster, l.ServiceAccount, rfc3339(u.Start)),
		EventName: EventLegacyTokenUse,
		Time:      s.recordTime(u.Start, now),
		Severity:  alert.Medium,
		Body: fmt.Sprintf("A legacy Secret-based token of service account %s/%s was used %d times in cluster %s (%s).",
			ns, name, u.Uses, l.Cluster, strings.Join(countList(u.Codes), ", ")),
		Attrs: a,
	})
}

// countDropped counts a watch of minter dropped by max_watched.
func (s *State) countDropped(now time.Time, minter string, fx *Effects) {
	start := intervalStart(now, s.cfg.SummaryInterval)
	if s.full != nil && !s.full.Start.Equal(start) {
		s.emitFull(now, fx)
	}
	if s.full == nil {
		s.full = &full{Start: start, Minters: map[string]uint64{}}
	}
	s.full.Dropped++
	addCount(s.full.Minters, minter, 1)
	s.dirty["full"] = true
}

// emitFull emits the lineage_watch_full record of the interval counted.
func (s *State) emitFull(now time.Time, fx *Effects) {
	f := s.full
	s.full = nil
	s.dirty["full"] = true
	a := []alert.Attr{
		alert.String("tokenwatch.pipeline.kind", PipelineWatchFull),
		alert.Int("tokenwatch.lineage.dropped", int64(min(f.Dropped, 1<<63-1))),
		alert.Int("tokenwatch.lineage.max_watched", int64(s.cfg.MaxWatched)),
	}
	a = append(a, arrayAttrs("tokenwatch.lineage.dropped_minters", countList(f.Minters))...)
	a = append(a,
		alert.String("tokenwatch.lineage.interval.start", rfc3339(f.Start)),
		alert.String("tokenwatch.lineage.interval.end", rfc3339(f.Start.Add(s.cfg.SummaryInterval))))
	fx.Records = append(fx.Records, alert.Record{
		ID:        recordID("lf-", rfc3339(f.Start)),
		EventName: alert.EventPipeline,
		Time:      s.recordTime(f.Start, now),
		Severity:  alert.High,
		Body: fmt.Sprintf("Token lineage watched lineage.max_watched (%d) tokens and dropped %d watch(es): later uses of those tokens are not reported.",
			s.cfg.MaxWatched, f.Dropped),
		Attrs: a,
	})
}

// expire frees the tokens and actor windows whose FreeAt passed.
func (s *State) expire(now time.Time, fx *Effects) {
	if s.nextFree.IsZero() || now.Before(s.nextFree) {
		return
	}
	s.nextFree = time.Time{}
	var gone []string
	for jti, t := range s.tokens {
		if !now.Before(t.FreeAt) {
			gone = append(gone, jti)
		} else {
			s.freeBy(t.FreeAt)
		}
	}
	slices.Sort(gone)
	for _, jti := range gone {
		s.drop(now, s.tokens[jti], fx)
	}
	for id, a := range s.actors {
		n := len(a.Mints)
		a.Mints = slices.DeleteFunc(a.Mints, func(am actorMint) bool { return !now.Before(am.FreeAt) })
		if len(a.Mints) != n {
			s.dirty["actor/"+id] = true
		}
		if len(a.Mints) == 0 {
			delete(s.actors, id)
			continue
		}
		for _, am := range a.Mints {
			s.freeBy(am.FreeAt)
		}
	}
}
