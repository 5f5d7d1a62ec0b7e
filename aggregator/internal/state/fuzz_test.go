package state

import (
	"bytes"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// FuzzPending: decoding stored pending bytes never panics, and what encode
// writes decodes to the same entry.
func FuzzPending(f *testing.F) {
	f.Add(int64(1777636800123456000), "prod", "cp-1", []byte{0x0a, 0x03, 'a', 'b', 'c'})
	f.Add(int64(0), "", "", []byte(nil))
	f.Add(int64(-5), "a\x00b", "ü", []byte{0xff})
	f.Fuzz(func(t *testing.T, ns int64, cluster, node string, event []byte) {
		// Arbitrary bytes as a stored value, of this schema and the last two.
		raw := append(append([]byte(cluster), node...), event...)
		decodePending(raw)
		decodePendingV4(raw)
		decodePendingV3("k", raw)

		p := Pending{Key: cluster + node, Deadline: time.Unix(0, ns), Cluster: cluster, Node: node, Event: event,
			Verdict: rule.Verdict{Match: len(event)%2 == 1, Excluded: len(node)%2 == 1, ByDefault: ns%2 == 0, By: node, Mismatch: cluster, Rule: uint64(ns)}}
		got, err := decodePending(encodePending(&p))
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", p, err)
		}
		wantDeadline := p.Deadline
		if ns < 0 {
			wantDeadline = time.Unix(0, 0)
		}
		if !got.Deadline.Equal(wantDeadline) || got.Key != p.Key || got.Cluster != cluster || got.Node != node || !bytes.Equal(got.Event, event) || got.Verdict != p.Verdict {
			t.Fatalf("round trip: got %+v, want %+v", got, p)
		}
	})
}
