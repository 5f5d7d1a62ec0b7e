// Package state is the aggregator's durable state: one embedded bbolt file
// under the state directory holding
//
//   - the outbox: alert records waiting for export, in insertion order, keyed
//     by a monotonic sequence; a record ID is outboxed at most once, and an
//     exported ID is remembered for the dedupe retention so that a re-delivered
//     request never produces a second export;
//   - the dedupe record: request key -> Pending, Done or DoneAlone (alerted
//     from a lone RequestReceived, so that a late completion is dropped as
//     late even after a restart) with the time it was recorded, pruned after
//     the retention;
//   - pending requests: non-final stages held for the stage grace, with their
//     deadline, serialized event and the rule's verdict on it (with the ID of
//     the rule that gave it), so that a restart resumes them;
//   - token lineage's state (lineage.Entry: watched tokens, followed minters,
//     summary accumulators, what was reported), written with the batch that
//     changed it and read back whole at start (LineageEntries).
//
// The ack rule of the aggregator rests on Commit: everything a batch changes
// (records, dedupe marks, pending entries, lineage entries) is written in one transaction, and
// Commit returns only after that transaction is durable (fsync), so a batch can
// be acknowledged to its agent as soon as Commit returns nil. Concurrent
// Commits from several streams are grouped into one transaction (group commit)
// so that one fsync serves them all.
//
// No entry can fail a commit by what a client controls: requests are keyed
// by the SHA-256 of their request key (which holds the client's Audit-ID,
// of any length, where bbolt keys stop at 32 KiB), a record ID longer than
// a digest by its digest, and every record is bounded (alert.Bounded) before
// it is stored.
//
// The file records its schema version. Version 2 added DoneAlone; version
// 3 stopped rewriting a record's ID entry when it is exported (the outbox
// tells); version 4 keys requests by digest; version 5 stores a held
// event's verdict. Open upgrades a version 1 to 4 file in place and refuses
// any other version with an error naming it, so an older aggregator does
// not misread a newer file. The lineage bucket came without a new version:
// Open creates it where it is missing, and an older aggregator leaves it
// alone.
package state
