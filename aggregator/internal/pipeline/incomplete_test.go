package pipeline

import (
	"testing"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// incomplete returns events without auditID or requestReceivedTimestamp
// (as old or converted logs have them), read at offsets of one file.
func incomplete(file string, offsets ...uint64) Batch {
	b := batch("prod", "cp-1")
	for i, off := range offsets {
		e := completed("alice", "", "", 201).event()
		if i%2 == 1 {
			e = received("alice", "id-without-timestamp", "").event()
		}
		e.Origin = &audit.Origin{File: file, Offset: off, Fingerprint: []byte("fp-of-the-file"), FingerprintLen: 1024}
		b.Events = append(b.Events, e)
	}
	return b
}

// Events without auditID or requestReceivedTimestamp are each a request of
// their own, alerted at once and marked; reading the same data again (a
// replay, or the file under its rotated name) alerts nothing new.
func TestIncompleteEvents(t *testing.T) {
	f := newFixture(t, config.Default())
	res := f.process(t, incomplete("/var/log/kubernetes/audit/audit.log", 0, 2048, 4096))
	if res.Alerted != 3 || res.Held != 0 {
		t.Fatalf("first read: %+v, want 3 alerted, none held", res)
	}
	res = f.process(t, incomplete("/var/log/kubernetes/audit/audit-2026-12-01T00-00-00.000.log.gz", 0, 2048, 4096))
	if res.Alerted != 0 {
		t.Errorf("replay of the same data: %+v, want nothing alerted", res)
	}
	var n int
	for _, r := range f.outbox(t) {
		if r.EventName != alert.EventTokenRequest {
			continue
		}
		n++
		if v, ok := r.Attr("tokenwatch.incomplete_event"); !ok || !v.Bool {
			t.Errorf("record %s: tokenwatch.incomplete_event = %+v, want true", r.ID, v)
		}
	}
	if n != 3 {
		t.Errorf("outbox holds %d token_request records, want 3", n)
	}
}
