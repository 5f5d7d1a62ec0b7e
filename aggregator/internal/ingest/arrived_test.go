package ingest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// fieldScreener is a recorder judged by fieldRule.
type fieldScreener struct{ recorder }

func (*fieldScreener) Screen(s *rule.Subject) rule.Verdict { return fieldRule{}.Screen(s) }

// TestStreamKeepsEventsAsArrived: behind the guard, with the screening
// codec, the events the codec kept reach Process with their encoding as it
// arrived, those it screened out are counted by verdict, and the guard
// counts every event sent, screened out or not.
func TestStreamKeepsEventsAsArrived(t *testing.T) {
	p := &fieldScreener{}
	s := New(Options{Processor: p, Insecure: true})
	cfg := guard.DefaultConfig()
	cfg.MaxEventsPerBatch = 4
	opts := append(s.ServerOptions(), guard.ServerOptions(cfg, nil)...)
	h := start(t, s, opts, insecure.NewCredentials())
	st := h.stream(t)
	send(t, st, hello("prod", "cp-1", false))
	recv(t, st) // welcome
	notToken := tokenEvent("g1", "alice")
	notToken.Verb = "get"
	sent := []*tokenwatchv1.TokenEvent{
		tokenEvent("x1", "system:node:cp-1", "ok"), tokenEvent("a1", "alice"), notToken, tokenEvent("b1", "bob"),
	}
	send(t, st, &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 1, Events: sent}}})
	if ack := recv(t, st).GetAck(); ack.GetSeq() != 1 {
		t.Fatalf("got %v, want the ack of 1", ack)
	}
	batches, _ := p.snapshot()
	if len(batches) != 1 {
		t.Fatalf("Process got %d batches, want 1", len(batches))
	}
	b := batches[0]
	if b.Excluded != 1 || b.NotMatched != 1 || len(b.Events) != 2 || len(b.Encoded) != 2 {
		t.Fatalf("batch: %d excluded, %d not matched, %d events, %d encodings; want 1, 1, 2, 2",
			b.Excluded, b.NotMatched, len(b.Events), len(b.Encoded))
	}
	for i, want := range []*tokenwatchv1.TokenEvent{sent[1], sent[3]} {
		var got tokenwatchv1.TokenEvent
		if err := proto.Unmarshal(b.Encoded[i], &got); err != nil {
			t.Fatalf("encoding %d: %v", i, err)
		}
		if diff := cmp.Diff(want, &got, protocmp.Transform()); diff != "" {
			t.Errorf("encoding %d (-sent +kept):\n%s", i, diff)
		}
	}
	// Five events, four of them screened out: over the guard's limit all
	// the same.
	over := []*tokenwatchv1.TokenEvent{sent[0], sent[0], sent[0], sent[0], sent[1]}
	send(t, st, &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 2, Events: over}}})
	if code := recvErr(t, st); code != codes.ResourceExhausted {
		t.Errorf("a batch over the guard's limit ended the stream with %v, want %v", code, codes.ResourceExhausted)
	}
}
