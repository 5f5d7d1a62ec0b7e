package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

// TestSourceFingerprint: every event carries the identity of its file's
// data, the same when the file is read again compressed under its rotated
// name, so the aggregator can key events that lack auditID or
// requestReceivedTimestamp by where they were read.
func TestSourceFingerprint(t *testing.T) {
	dir := t.TempDir()
	data := noise + tokenLine("a1") + noise + tokenLine("a2")
	live := filepath.Join(dir, "audit.log")
	appendFile(t, live, data)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	rotated := filepath.Join(dir, "audit-2026-12-01T00-00-00.000.log.gz")
	if err := os.WriteFile(rotated, gz.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte(data[:1024]))
	for _, path := range []string{live, rotated} {
		agg, addr := newAggregator(t, false)
		cfg := config(path, addr, "")
		cfg.Once = true
		if err := Run(context.Background(), cfg); err != nil {
			t.Fatalf("Run --once %s = %v", path, err)
		}
		agg.waitEvents(t, 2)
		agg.mu.Lock()
		srcs := agg.sources
		agg.mu.Unlock()
		for i, s := range srcs {
			if !bytes.Equal(s.GetFingerprint(), want[:]) || s.GetFingerprintLen() != 1024 {
				t.Errorf("%s: event %d fingerprint %x/%d, want %x/1024", filepath.Base(path), i, s.GetFingerprint(), s.GetFingerprintLen(), want)
			}
		}
		if off := srcs[1].GetOffset(); off != uint64(len(noise)+len(tokenLine("a1"))+len(noise)) {
			t.Errorf("%s: offset of a2 = %d", filepath.Base(path), off)
		}
	}
}
