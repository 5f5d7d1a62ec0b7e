// Package sender streams token events and loss reports to the aggregator
// over the AuditStreamService bidirectional stream and tells its caller what
// the aggregator has acknowledged.
//
// Items are queued in order, packed into batches of bounded size, and kept
// until acknowledged: at most MaxUnacked batches of at most MaxBatchEvents
// events, so memory is bounded and Enqueue blocks when the aggregator falls
// behind (the audit files are the buffer). Each item carries an opaque mark;
// OnAck receives, in order, the mark of the newest item whose batch and all
// earlier ones are acknowledged. The items of one call with a mark are
// queued with it all or none (EnqueueItems says when they cannot be): the
// mark is a checkpoint, and an item acknowledged without it would be sent
// again from the checkpoint before. After a reconnect (exponential backoff
// with jitter) every unacknowledged batch is sent again with fresh sequence
// numbers: delivery is at least once and the aggregator deduplicates.
//
// With Config.Lineage the Hello declares the "lineage" feature. A stream
// whose Welcome carries LineageSettings has lineage on: its WatchUpdates go
// to Lineage.Watch from the receive goroutine, in stream order, so a batch's
// watches are applied before its Ack moves the mark; batches then carry
// lineage uses and counts beside the events (EnqueueItems), delivered at
// least once like events. A Welcome without settings turns lineage off for
// the stream: uses and counts are not sent on it.
package sender
