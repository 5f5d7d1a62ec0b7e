// Package agent wires the tokenwatch agent together: the follower reads the
// audit log and its rotations, the pre-filter finds token creates, the
// sender streams them to the aggregator, and the checkpoint moves only to
// positions whose every token create the aggregator has acknowledged.
// Token lineage (package uses) matches and indexes each block before its
// token creates are queued, and its uses and counts travel in the same
// batches; a block's mark carries the lineage ticket that releases the
// lines pinned after its token creates.
package agent
