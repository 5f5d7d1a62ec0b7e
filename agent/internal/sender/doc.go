// Package sender streams token events and loss reports to the aggregator
// over the AuditStreamService bidirectional stream and tells its caller what
// the aggregator has acknowledged.
//
// Items are queued in order, packed into batches of bounded size, and kept
// until acknowledged: at most MaxUnacked batches of at most MaxBatchEvents
// events, so memory is bounded and Enqueue blocks when the aggregator falls
// behind (the audit files are the buffer). Each item carries an opaque mark;
// OnAck receives, in order, the mark of the newest item whose batch and all
// earlier ones are acknowledged. After a reconnect (exponential backoff with
// jitter) every unacknowledged batch is sent again with fresh sequence
// numbers: delivery is at least once and the aggregator deduplicates.
package sender
