// Package scan holds the agent's scan benchmark, agentscan_test.go.in: the
// follower reading a warm realistic audit log to its end with the pre-filter
// and decode of every block, side by side with
// `LC_ALL=C grep -cF '"subresource":"token"'` on the same file. Only packages
// under agent/ may import the follower and the pre-filter, so bench/run.sh
// scan compiles the file into agent/internal/prefilter's tests with
// `go test -overlay`; see docs/BENCHMARKS.md.
package scan
