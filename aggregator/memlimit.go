package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// defaultMemoryRatio is the share of the cgroup's memory limit given to the
// Go heap and runtime when GOMEMLIMIT is not set; the rest is for what the
// Go runtime does not count (the kernel's socket buffers of hundreds of
// agent connections, the state file's mapped pages).
const defaultMemoryRatio = 0.85

// memoryLimit is the soft memory limit decision: where the figure comes from
// and what it is.
type memoryLimit struct {
	source string // GOMEMLIMIT, cgroup, none, off
	cgroup uint64 // the cgroup's limit, when read
	ratio  float64
	limit  int64 // the Go soft memory limit to set; 0: leave it
}

// decideMemoryLimit returns the Go soft memory limit for the environment
// (getenv) and the cgroup limit (cgroup, memlimit.FromCgroup in production):
// GOMEMLIMIT, when set, wins (the Go runtime applies it itself);
// AUTOMEMLIMIT=off leaves the limit unset; otherwise the limit is
// AUTOMEMLIMIT (a fraction in (0, 1], default defaultMemoryRatio) of the
// cgroup's limit (v2 memory.max, v1 memory.limit_in_bytes). An invalid
// AUTOMEMLIMIT is an error; an unreadable or absent cgroup limit is not (the
// limit stays unset, and the reason is in source).
func decideMemoryLimit(getenv func(string) string, cgroup func() (uint64, error)) (memoryLimit, error) {
	if v := getenv("GOMEMLIMIT"); v != "" {
		return memoryLimit{source: "GOMEMLIMIT"}, nil
	}
	d := memoryLimit{ratio: defaultMemoryRatio}
	switch v := getenv("AUTOMEMLIMIT"); v {
	case "":
	case "off":
		return memoryLimit{source: "off"}, nil
	default:
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || !(r > 0 && r <= 1) {
			return memoryLimit{}, fmt.Errorf("AUTOMEMLIMIT=%q: want a fraction of the cgroup memory limit in (0, 1], or off", v)
		}
		d.ratio = r
	}
	limit, err := cgroup()
	switch {
	case errors.Is(err, memlimit.ErrNoLimit):
		d.source = "none"
		return d, nil
	case err != nil:
		d.source = "none: " + err.Error()
		return d, nil
	}
	d.source, d.cgroup = "cgroup", limit
	d.limit = math.MaxInt64
	if f := float64(limit) * d.ratio; f < math.MaxInt64 {
		d.limit = int64(f)
	}
	return d, nil
}

// setMemoryLimit sets the Go soft memory limit (debug.SetMemoryLimit) to a
// share of the memory limit the aggregator runs under, so that the collector
// works harder as the heap nears the limit instead of the kernel killing the
// process, and returns the figures for the "aggregator serving" line (logged
// then, not now: a start that fails afterwards says one line).
func setMemoryLimit() ([]any, error) {
	d, err := decideMemoryLimit(os.Getenv, memlimit.FromCgroup)
	if err != nil {
		return nil, err
	}
	if d.limit > 0 {
		debug.SetMemoryLimit(d.limit)
	}
	current := debug.SetMemoryLimit(-1)
	attrs := []any{"go_memory_limit_source", d.source}
	if current != math.MaxInt64 {
		attrs = append(attrs, "go_memory_limit_bytes", current, "go_memory_limit_mib", current>>20)
	}
	if d.cgroup > 0 {
		attrs = append(attrs, "cgroup_limit_bytes", d.cgroup, "go_memory_limit_ratio", d.ratio)
	}
	return attrs, nil
}
