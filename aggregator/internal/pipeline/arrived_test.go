package pipeline

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/config"
	"github.com/tokenwatch/tokenwatch/internal/wire"
)

// TestHeldAsArrived: a held event is stored in the form it arrived in
// (Batch.Encoded, here with a field this version does not know), one
// without it is encoded once, as the aggregator stored every held event
// before; at the deadline both alert exactly as a batch without encodings
// does.
func TestHeldAsArrived(t *testing.T) {
	alice, bob := received("alice", "a1", rrt1).event(), received("bob", "b1", rrt2).event()
	plain, err := proto.Marshal(wire.ToProto(alice))
	if err != nil {
		t.Fatal(err)
	}
	arrived := protowire.AppendBytes(protowire.AppendTag(bytes.Clone(plain), 999, protowire.BytesType), []byte("newer agent"))

	run := func(b Batch) (stored [][]byte, f *fixture) {
		t.Helper()
		f = newFixture(t, config.Default())
		if res := f.process(t, b); res.Held != 2 {
			t.Fatalf("Held = %d, want 2", res.Held)
		}
		due, err := f.store.DuePending(t0.Add(time.Hour), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, pd := range due {
			stored = append(stored, pd.Event)
		}
		f.clk.Add(2 * time.Second) // the default stage_grace
		if n := f.tick(t); n != 2 {
			t.Fatalf("Tick at the deadline added %d records, want 2", n)
		}
		return stored, f
	}
	b := batch("prod", "cp-1")
	b.Events = append(b.Events, alice, bob)
	b.Encoded = [][]byte{arrived, nil}
	stored, got := run(b)
	bobPlain, err := proto.Marshal(wire.ToProto(bob))
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 || !bytes.Equal(stored[0], arrived) || !bytes.Equal(stored[1], bobPlain) {
		t.Errorf("stored %x, want the encoding as it arrived %x, then %x", stored, arrived, bobPlain)
	}

	old := batch("prod", "cp-1")
	old.Events = append(old.Events, received("alice", "a1", rrt1).event(), received("bob", "b1", rrt2).event())
	_, want := run(old)
	if diff := cmp.Diff(want.outbox(t), got.outbox(t)); diff != "" {
		t.Errorf("records of held events kept as they arrived (-encoded here +as arrived):\n%s", diff)
	}
}
