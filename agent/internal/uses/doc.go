// Package uses is the agent's side of token lineage: it holds the watch set
// the aggregator pushes, finds in each block the requests that matter (a
// watched token's uses, a followed minter's sensitive actions, legacy-token
// requests), sends the first use per token and reason key at once and counts
// the rest, and keeps a lookback index of the lines it read so that a watch
// arriving later still finds them.
//
// Ordering. A block is matched against the watch set and indexed under one
// lock, and a WatchUpdate is applied and searched for in the index under the
// same lock: every line is either matched live or found by the watch's
// search. Lines read after a token create whose batch is not acknowledged
// are pinned in the index until that acknowledgement (the aggregator sends a
// batch's watches before its Ack), so a use read after its mint is found
// however far ahead of the aggregator the agent reads. When pinned entries
// fill the index, Block waits for acknowledgements: they are never dropped.
//
// Re-reading. The index keeps only keys and locations (linematch.Lookback,
// 64 bytes a line). Each file read within the window is kept open through a
// duplicate of the follower's handle, so a rotation, rename or deletion does
// not matter; a plain file's line is read again with ReadAt, a compressed
// file's by decompressing it again from its start (once per search, in
// offset order). A line that cannot be read again is reported as a loss
// (reason lineage_lookback_unavailable).
//
// Memory. The index holds at most Config.Capacity entries; per token at most
// Config.MaxKeysPerToken reason keys are remembered (further uses with a new
// key are counted, not sent); a count holds at most 100 source IPs and 100
// verb keys.
package uses
