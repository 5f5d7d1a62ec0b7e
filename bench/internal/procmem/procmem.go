// Package procmem reads a process's memory figures from
// /proc/<pid>/status (Linux): resident set size now and its high-water mark.
package procmem

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Mem is a process's resident memory, in bytes.
type Mem struct {
	RSS int64 // VmRSS: resident now
	HWM int64 // VmHWM: the peak resident set size
}

// Read returns the memory figures of process pid.
func Read(pid int) (Mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	m, err := Parse(b)
	if err != nil {
		return Mem{}, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	return m, nil
}

// Parse reads VmRSS and VmHWM from the text of /proc/<pid>/status.
func Parse(status []byte) (Mem, error) {
	var m Mem
	var seen int
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		key, rest, ok := bytes.Cut(sc.Bytes(), []byte{':'})
		if !ok {
			continue
		}
		var dst *int64
		switch string(key) {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return Mem{}, fmt.Errorf("%s: unexpected value %q", key, rest)
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return Mem{}, fmt.Errorf("%s: %w", key, err)
		}
		*dst = kb << 10
		seen++
	}
	if seen != 2 {
		return Mem{}, fmt.Errorf("VmRSS and VmHWM not both present")
	}
	return m, nil
}

// MiB formats n bytes in MiB with one decimal.
func MiB(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) }
