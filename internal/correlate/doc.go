// Package correlate finds what no single cluster's log shows: one actor or
// one source minting tokens across clusters, or for many service accounts.
// It works on event time with sliding windows and bounded lateness, and is
// pure: no I/O, no clock (time is given). Its state does not survive a
// restart; after one, agents re-send what was not acknowledged and a crossing
// formed again from the same events gets the same record ID.
//
// Suppression: after a record of a (kind, key), the next one is emitted
// only for a window whose newest event is one window length or more after
// the newest event of that record. The reference only moves forward: an
// old event, from a cluster catching up after a network cut, neither emits
// nor resets it, so records of one key are at least a window of event time
// apart whatever the arrival order (at most one per window of the span).
//
// A crossing that a lagging cluster reveals entirely in the past, in a
// window ending before the last record's, is dropped: the key has already
// been reported for that stretch of event time, and the contract emits a
// (kind, key) again only once a window of event time has passed. Its
// events are listed only where they also fall into a later record's
// window; the ones that do not are still in the base alerts. Reporting
// such crossings too would take a record per lagging event, which is what
// this rule replaced (3,000 events one second apart, one cluster 12
// minutes behind: 3,928 records, now 15, as in order).
//
// Event times are the audit log's requestReceivedTimestamp, untrusted: a
// log can be replayed or forged, and a cluster's clock can be wrong. Windows
// and suppression compare the times of different clusters, so a time far
// ahead (year 2099) would suppress the key in every cluster, make its own
// cluster's later events late and keep state from expiring, until then. A
// time more than MaxSkew ahead of the aggregator's clock (given to Observe)
// therefore counts as now+MaxSkew, and a record with such events says how
// many (tokenwatch.correlation.clamped_events): one cluster's times can do
// no more than real events of now could. Times in the past are kept as they
// are, for replays of old logs: every reference (the newest event of a
// cluster, of all, of a key's last record) only moves forward, so an old
// time cannot suppress, make late or expire anything newer.
//
// The reference is kept as long as the key's series is: Expire drops both
// once none of the key's events is within Window+Lateness of the newest
// event seen, its last record is a window older still, and no known
// cluster can still send an event less than a window after that record
// (each accepts events down to Lateness before its own newest). So a
// cluster lagging further behind than Window+Lateness cannot form the key
// anew and emit its window again; the price is that a cluster gone silent
// keeps the references of keys reported since (one small entry per key).
package correlate
