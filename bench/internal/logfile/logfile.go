// Package logfile generates the benchmarks' realistic audit logs (about
// 1.1 KB lines, 0.5% token creates, the attack scenario and its decoys) and
// caches them by seed and size, so every benchmark run reads the same bytes
// without paying the generation again.
package logfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/auditgen"
)

// LineBytes is the approximate length of a generated line.
const LineBytes = 1100

// Config returns the generator settings of a log of about size bytes.
func Config(seed uint64, size int64) auditgen.Config {
	return auditgen.Config{
		Seed:      seed,
		Lines:     int(size / LineBytes),
		TokenRate: 0.005,
		Start:     time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
		Step:      time.Millisecond,
		Attacks:   true,
		Pad:       LineBytes,
	}
}

// Ensure returns the path of the cached log for (seed, size) in dir,
// generating it first when it or its expectation file (ExpectPath) is
// missing. Files are written under temporary names and renamed, so a crash
// never leaves a short log behind.
func Ensure(dir string, seed uint64, size int64) (string, error) {
	return ensure(dir, Name(seed, size), Config(seed, size), size)
}

// LineageWorkloads is the number of in-cluster workloads of a lineage log.
const LineageWorkloads = 5000

// LineageConfig returns the generator settings of a lineage log of about
// size bytes: Config's, with 60% of routine requests made by
// LineageWorkloads pods authenticated with bound tokens (a JTI credential
// id), as on a cluster busy with in-cluster clients.
func LineageConfig(seed uint64, size int64) auditgen.Config {
	cfg := Config(seed, size)
	cfg.WorkloadRate = 0.6
	cfg.Workloads = Workloads(seed, LineageWorkloads)
	return cfg
}

// Workloads returns n workloads, the same for the same seed: service
// accounts system:serviceaccount:ns-<i%50>:sa-<i> with random uuid JTIs.
func Workloads(seed uint64, n int) []auditgen.Workload {
	rnd := rand.New(rand.NewPCG(seed, 0x6a09e667f3bcc908))
	ws := make([]auditgen.Workload, n)
	for i := range ws {
		a, b := rnd.Uint64(), rnd.Uint64()
		ws[i] = auditgen.Workload{
			User: fmt.Sprintf("system:serviceaccount:ns-%d:sa-%d", i%50, i),
			JTI: fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", uint32(a>>32), uint16(a>>16), uint16(a)&0xfff,
				(uint16(b>>48)&0x3fff)|0x8000, b&0xffffffffffff),
		}
	}
	return ws
}

// EnsureLineage is Ensure for the lineage log of LineageConfig.
func EnsureLineage(dir string, seed uint64, size int64) (string, error) {
	return ensure(dir, LineageName(seed, size), LineageConfig(seed, size), size)
}

// LineageName is the cached lineage log's name for (seed, size).
func LineageName(seed uint64, size int64) string {
	return fmt.Sprintf("audit-lineage-s%d-%s.log", seed, human(size))
}

// ensure returns dir/name, generating it with cfg first when it or its
// expectation file is missing.
func ensure(dir, name string, cfg auditgen.Config, size int64) (string, error) {
	if size <= 0 {
		return "", fmt.Errorf("audit log size %d: must be positive", size)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create log cache %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	_, err := os.Stat(path)
	_, errx := os.Stat(ExpectPath(path))
	if err == nil && errx == nil {
		return path, nil
	}
	for _, err := range []error{err, errx} {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("stat cached log: %w", err)
		}
	}
	return generate(dir, path, cfg)
}

// generate writes the log of cfg to path and its expectations beside it.
func generate(dir, path string, cfg auditgen.Config) (string, error) {
	tmp, err := os.CreateTemp(dir, ".gen-*.log")
	if err != nil {
		return "", fmt.Errorf("create audit log in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	want, _, err := auditgen.Generate(tmp, cfg)
	if err != nil {
		tmp.Close()
		return "", fmt.Errorf("generate %s: %w", path, err)
	}
	b, err := json.Marshal(want)
	if err != nil {
		tmp.Close()
		return "", fmt.Errorf("encode expected alerts of %s: %w", path, err)
	}
	if err := os.WriteFile(ExpectPath(path)+".tmp", b, 0o644); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write expected alerts of %s: %w", path, err)
	}
	if err := os.Rename(ExpectPath(path)+".tmp", ExpectPath(path)); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write expected alerts of %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// ExpectPath is where Ensure keeps the requests that must alert of the log
// at path (auditgen's truth, a JSON array of auditgen.Expected).
func ExpectPath(path string) string { return strings.TrimSuffix(path, ".log") + ".expect.json" }

// Expected reads the requests that must alert of a log Ensure generated.
func Expected(path string) ([]auditgen.Expected, error) {
	b, err := os.ReadFile(ExpectPath(path))
	if err != nil {
		return nil, fmt.Errorf("read expected alerts: %w", err)
	}
	var want []auditgen.Expected
	if err := json.Unmarshal(b, &want); err != nil {
		return nil, fmt.Errorf("read expected alerts %s: %w", ExpectPath(path), err)
	}
	return want, nil
}

// EnsureRepeat returns the path of dir/name, writing it first when it is
// missing: the lines of src repeated until the file holds at least size
// bytes (a genuine log stretched to benchmark size).
func EnsureRepeat(dir, name string, src []byte, size int64) (string, error) {
	if len(src) == 0 || src[len(src)-1] != '\n' {
		return "", fmt.Errorf("repeat log %s: source must be whole lines", name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create log cache %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	tmp, err := os.CreateTemp(dir, ".rep-*.log")
	if err != nil {
		return "", fmt.Errorf("create audit log in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	for n := int64(0); n < size; n += int64(len(src)) {
		if _, err := tmp.Write(src); err != nil {
			tmp.Close()
			return "", fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// Name is the cached file's name for (seed, size).
func Name(seed uint64, size int64) string {
	return fmt.Sprintf("audit-bench-s%d-%s.log", seed, human(size))
}

func human(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dB", n)
}

// ParseSize reads sizes like "1GiB", "256MiB", "1G", "300M" or plain bytes.
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}}
	mult := int64(1)
	num := s
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	var n int64
	if _, err := fmt.Sscan(num, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M, G (binary units)", s)
	}
	return n * mult, nil
}
