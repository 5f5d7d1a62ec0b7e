// Package agent wires the tokenwatch agent together: the follower reads the
// audit log and its rotations, the pre-filter finds token creates, the
// sender streams them to the aggregator, and the checkpoint moves only to
// positions whose every token create the aggregator has acknowledged.
package agent
