// Package uses is the agent's side of token lineage: it holds the watch set
// the aggregator pushes, finds in each block the requests that matter (a
// watched token's uses, a followed minter's sensitive actions, legacy-token
// requests), sends the first use per token and reason key at once and counts
// the rest, and keeps a lookback index of the blocks it read so that a watch
// arriving later still finds their lines.
//
// Ordering. A block is matched against the watch set and indexed under one
// lock, and a WatchUpdate is applied and searched for in the index under the
// same lock: every line is either matched live or found by the watch's
// search. Blocks read after a token create whose batch is not acknowledged
// are pinned in the index until that acknowledgement (the aggregator sends a
// batch's watches before its Ack), so a use read after its mint is found
// however far ahead of the aggregator the agent reads. When pinned blocks
// fill the index, Block waits for acknowledgements: they are never dropped.
//
// The index. Reading costs one pass of the matcher (linematch.Matcher.Block)
// per block and one index entry per block: its location and read time,
// never keys per line. A search costs on a watch's arrival instead: Run
// reads again the blocks the watch may match and runs the matcher on them
// with the new watches (searches queued meanwhile are run together, each
// block read once). Only blocks read since readSlack before the watch's
// From (the mint time) can hold its matches: a line is read after the
// apiserver of the same node logged it, and it logs a request after its
// requestReceivedTimestamp, so a block read earlier holds only requests
// received before From. Nor can a block whose last line was logged
// (stageTimestamp) more than logSlack before From: the apiserver writes
// its events in the order it stamps them. A live agent thus reads again a
// second or two of log per watch, and an agent behind (a backlog) the
// blocks logged since about From, not the whole window. (A line whose
// requestReceivedTimestamp does not parse matches any bounds, as
// linematch.Classify has it; in a block read or logged before From it is
// not found.)
//
// Stages. The apiserver logs a request once per audit stage, all with its
// auditID; a request counts once, as the event that carries its outcome:
// its ResponseComplete (or Panic), or, for a long-running request (watch,
// exec, attach, portforward, proxy, log), its ResponseStarted, the later
// ResponseComplete being skipped. RequestReceived events are never uses:
// a policy that logs only that stage yields no lineage (see stages for the
// bound on the long-running requests remembered, and for the starts the
// checkpoint keeps across a restart: Starts, RestoreStarts). Live and
// lookback matches follow the same rule.
//
// Re-reading. Each file read within the window is kept open through a
// duplicate of the follower's handle, so a rotation, rename or deletion does
// not matter; a plain file's block is read again with ReadAt, a compressed
// file's by decompressing it again from its start (once per search, in
// offset order). A block that cannot be read again is reported as a loss
// (reason lineage_lookback_unavailable: its bytes, and a line at least).
//
// Memory. The index holds at most Config.Capacity bytes of log in at most
// 65,536 blocks (40 bytes each); per token at most Config.MaxKeysPerToken
// reason keys are remembered (further uses with a new key are counted, not
// sent); a count holds at most 100 source IPs and 100 verb keys.
package uses
