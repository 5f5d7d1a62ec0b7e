// Package scan holds the agent's scan benchmark: the follower reading a warm
// realistic audit log to its end with the pre-filter and decode of every
// block (internal/follow, internal/prefilter, internal/audit), side by side
// with `LC_ALL=C grep -cF '"subresource":"token"'` on the same file and a
// plain read(2) floor. bench/run.sh scan runs it; see docs/BENCHMARKS.md.
package scan
