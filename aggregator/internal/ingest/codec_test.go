package ingest

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// fieldRule is a Screener for tests: create by a "system:" user with
// group "ok" is excluded, a create on serviceaccounts/token by another
// named user is kept, the rest does not match. It reads every field the
// codec scans, so a scanning mistake changes its verdict.
type fieldRule struct{}

func (fieldRule) Screen(s *rule.Subject) rule.Verdict {
	if s.Verb != "create" || s.Resource != "serviceaccounts" || s.Subresource != "token" || s.User == "" {
		return rule.Verdict{}
	}
	if strings.HasPrefix(s.User, "system:") && strings.HasPrefix(s.Namespace+s.Name, "kube") {
		for _, g := range s.Groups {
			if g == "ok" {
				return rule.Verdict{Match: true, Excluded: true}
			}
		}
	}
	return rule.Verdict{Match: true}
}

// screenProto is fieldRule over a decoded event: what the codec must decide.
func screenProto(e *tokenwatchv1.TokenEvent) rule.Verdict {
	s := wire.Subject(e)
	return fieldRule{}.Screen(&s)
}

func tokenEvent(id, user string, groups ...string) *tokenwatchv1.TokenEvent {
	return &tokenwatchv1.TokenEvent{
		AuditId: id, Stage: "ResponseComplete", Verb: "create", RequestUri: "/api/v1/namespaces/kube-system/serviceaccounts/x/token",
		ObjectRef:   &tokenwatchv1.ObjectRef{Resource: "serviceaccounts", Subresource: "token", Namespace: "kube-system", Name: "x"},
		User:        &tokenwatchv1.UserInfo{Present: true, Username: user, Groups: groups, Extra: map[string]*tokenwatchv1.StringList{"k": {Values: []string{"v"}}}},
		Annotations: map[string]string{"authorization.k8s.io/decision": "allow"},
		SourceIps:   []string{"10.0.0.1"},
	}
}

// checkCodec decodes raw with the codec and with plain protobuf and checks
// they agree: screened-out events are empty slots counted by the verdict
// the decoded event gets, the others equal. The codec sees raw in one
// piece, then in three (as gRPC hands over a message received in several
// frames), copied into a reused buffer that still holds another message's
// bytes.
func checkCodec(t *testing.T, raw []byte) {
	t.Helper()
	whole := mem.BufferSlice{mem.SliceBuffer(append([]byte(nil), raw...))}
	checkCodecPieces(t, raw, whole)
	garbage := flatPool.Get(len(raw) + 64)
	for i := range *garbage {
		(*garbage)[i] = 0xa5
	}
	flatPool.Put(garbage)
	a, b := len(raw)/3, 2*len(raw)/3
	split := mem.BufferSlice{
		mem.SliceBuffer(append([]byte(nil), raw[:a]...)),
		mem.SliceBuffer(append([]byte(nil), raw[a:b]...)),
		mem.SliceBuffer(append([]byte(nil), raw[b:]...)),
	}
	checkCodecPieces(t, raw, split)
}

func checkCodecPieces(t *testing.T, raw []byte, data mem.BufferSlice) {
	t.Helper()
	c := newCodec(fieldRule{})
	var want, plain tokenwatchv1.StreamRequest
	got := &inbound{StreamRequest: new(tokenwatchv1.StreamRequest)}
	werr := proto.Unmarshal(raw, &want)
	gerr := c.Unmarshal(data, got)
	perr := c.Unmarshal(data, &plain)
	// What the codec kept must not point into the buffer it was given back.
	reused := flatPool.Get(len(raw))
	for i := range *reused {
		(*reused)[i] = 0x5a
	}
	defer flatPool.Put(reused)
	if (perr != nil) != (werr != nil) {
		t.Fatalf("codec into a StreamRequest: %v; protobuf: %v", perr, werr)
	}
	if werr != nil {
		// The codec may drop an event the rule need not read (invalid UTF-8
		// in an unread field) instead of refusing the message.
		return
	}
	// Into anything but an inbound, the codec is plain protobuf.
	if diff := cmp.Diff(&want, &plain, protocmp.Transform()); diff != "" {
		t.Fatalf("codec into a StreamRequest differs (-proto +codec):\n%s", diff)
	}
	if gerr != nil {
		t.Fatalf("codec refused what protobuf decodes: %v", gerr)
	}
	wb, gb := want.GetBatch(), got.GetBatch()
	if wb == nil {
		if diff := cmp.Diff(&want, got.StreamRequest, protocmp.Transform()); diff != "" {
			t.Fatalf("non-batch message differs (-proto +codec):\n%s", diff)
		}
		return
	}
	if gb == nil {
		t.Fatalf("codec gave %v, protobuf a batch", got.StreamRequest)
	}
	if gb.GetSeq() != wb.GetSeq() || len(gb.GetEvents()) != len(wb.GetEvents()) {
		t.Fatalf("seq %d, %d events; protobuf: seq %d, %d events", gb.GetSeq(), len(gb.GetEvents()), wb.GetSeq(), len(wb.GetEvents()))
	}
	if diff := cmp.Diff(wb.GetLosses(), gb.GetLosses(), protocmp.Transform()); diff != "" {
		t.Fatalf("losses differ (-proto +codec):\n%s", diff)
	}
	if diff := cmp.Diff(wb.GetUses(), gb.GetUses(), protocmp.Transform()); diff != "" {
		t.Fatalf("uses differ (-proto +codec):\n%s", diff)
	}
	if diff := cmp.Diff(wb.GetCounts(), gb.GetCounts(), protocmp.Transform()); diff != "" {
		t.Fatalf("counts differ (-proto +codec):\n%s", diff)
	}
	// The message comes with the codec's verdicts of the events it decoded,
	// in order, or none when it fell back to protobuf; the events it
	// screened out are counted by verdict.
	var decoded []rule.Verdict
	var out screening
	for i, we := range wb.GetEvents() {
		// Screened out: an empty slot, counted by its verdict. Otherwise
		// (kept, or decoded by the fallback) the event protobuf decodes.
		ge := gb.GetEvents()[i]
		v := screenProto(we)
		switch {
		case ge == nil && v.Alerts():
			t.Fatalf("event %d screened out, verdict of the decoded event %+v", i, v)
		case ge == nil && v.Excluded:
			out.excluded++
		case ge == nil:
			out.notMatched++
		default:
			if len(got.screened.kept) > 0 {
				checkArrived(t, i, we, got.screened.raw[len(decoded)])
			}
			decoded = append(decoded, v)
			if diff := cmp.Diff(we, ge, protocmp.Transform()); diff != "" {
				t.Fatalf("event %d differs (-proto +codec):\n%s", i, diff)
			}
		}
	}
	if out.excluded != got.screened.excluded || out.notMatched != got.screened.notMatched {
		t.Fatalf("codec counted %d excluded, %d not matched; its empty slots are %d and %d",
			got.screened.excluded, got.screened.notMatched, out.excluded, out.notMatched)
	}
	if len(got.screened.kept) > 0 {
		if diff := cmp.Diff(decoded, got.screened.kept); diff != "" {
			t.Fatalf("codec's verdicts of the decoded events (-decoded +codec):\n%s", diff)
		}
	}
}

// checkArrived checks that raw, the encoding the codec kept of event i,
// decodes as protobuf decoded the event (it was copied out of the receive
// buffer, since overwritten).
func checkArrived(t *testing.T, i int, want *tokenwatchv1.TokenEvent, raw []byte) {
	t.Helper()
	var got tokenwatchv1.TokenEvent
	if err := proto.Unmarshal(raw, &got); err != nil {
		t.Fatalf("event %d: its encoding as it arrived does not decode: %v", i, err)
	}
	if diff := cmp.Diff(want, &got, protocmp.Transform()); diff != "" {
		t.Fatalf("event %d: its encoding as it arrived differs (-proto +kept):\n%s", i, diff)
	}
}

func TestCodecScreensBatchEvents(t *testing.T) {
	notToken := tokenEvent("g1", "alice")
	notToken.Verb = "get"
	noUser := tokenEvent("u1", "")
	noUser.User = nil
	batch := &tokenwatchv1.Batch{Seq: 42, Events: []*tokenwatchv1.TokenEvent{
		tokenEvent("x1", "system:node:cp-1", "a", "ok"),
		tokenEvent("a1", "alice", "ok"),
		tokenEvent("k1", "system:node:cp-1", "other"),
		notToken, noUser,
	}, Losses: []*tokenwatchv1.LossReport{{Reason: "line_too_long", File: "audit.log", BytesLost: 9}}}
	withLineage := proto.CloneOf(batch)
	withLineage.Uses, withLineage.Counts = lineageUses(), lineageCounts()
	tests := []struct {
		name string
		give *tokenwatchv1.StreamRequest
		// One letter per event: x screened out as excluded, - as not
		// matching, k kept (decoded).
		want string
	}{
		{"batch", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: batch}}, "xkk--"},
		{"batch with lineage uses and counts", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: withLineage}}, "xkk--"},
		{"lineage only", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 2, Uses: lineageUses()}}}, ""},
		{"hello", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: "c", Node: "n"}}}, ""},
		{"heartbeat", heartbeat(), ""},
		{"empty batch", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 1}}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := proto.Marshal(tt.give)
			if err != nil {
				t.Fatal(err)
			}
			checkCodec(t, raw)
			got := &inbound{StreamRequest: new(tokenwatchv1.StreamRequest)}
			if err := newCodec(fieldRule{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, got); err != nil {
				t.Fatal(err)
			}
			var slots []byte
			for _, e := range got.GetBatch().GetEvents() {
				if e == nil {
					slots = append(slots, '?')
				} else {
					slots = append(slots, 'k')
				}
			}
			wantSlots := strings.NewReplacer("x", "?", "-", "?").Replace(tt.want)
			if string(slots) != wantSlots {
				t.Errorf("slots %q, want %q (?: screened out)", slots, wantSlots)
			}
			sc := got.screened
			if sc.excluded != strings.Count(tt.want, "x") || sc.notMatched != strings.Count(tt.want, "-") || len(sc.kept) != strings.Count(tt.want, "k") {
				t.Errorf("screened %d excluded, %d not matched, %d kept; want %q", sc.excluded, sc.notMatched, len(sc.kept), tt.want)
			}
		})
	}
}

// TestCodecIrregularFallsBack: messages a well-formed sender never writes
// (a repeated oneof, a repeated user merging) decode as protobuf does.
func TestCodecIrregularFallsBack(t *testing.T) {
	one, _ := proto.Marshal(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 1, Events: []*tokenwatchv1.TokenEvent{tokenEvent("a", "system:x", "ok")}}}})
	two, _ := proto.Marshal(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 2}}})
	hello, _ := proto.Marshal(&tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: "c"}}})
	// A user field twice: the second merges into the first (username
	// replaced, groups appended).
	ev, _ := proto.Marshal(tokenEvent("m", "alice"))
	user2, _ := proto.Marshal(&tokenwatchv1.UserInfo{Username: "system:y", Groups: []string{"ok"}})
	ev = protowire.AppendTag(ev, 8, protowire.BytesType)
	ev = protowire.AppendBytes(ev, user2)
	batch := protowire.AppendTag(nil, 2, protowire.BytesType)
	batch = protowire.AppendBytes(batch, ev)
	merged := protowire.AppendTag(nil, 2, protowire.BytesType)
	merged = protowire.AppendBytes(merged, batch)
	var req tokenwatchv1.StreamRequest
	if err := proto.Unmarshal(merged, &req); err != nil || req.GetBatch().GetEvents()[0].GetUser().GetUsername() != "system:y" {
		t.Fatalf("test message: %v, %v", &req, err)
	}
	for name, raw := range map[string][]byte{
		"two batches":      append(append([]byte(nil), one...), two...),
		"batch then hello": append(append([]byte(nil), one...), hello...),
		"merged user":      merged,
		"truncated":        one[:len(one)-3],
	} {
		t.Run(name, func(t *testing.T) { checkCodec(t, raw) })
	}
}

func FuzzCodec(f *testing.F) {
	for _, m := range []*tokenwatchv1.StreamRequest{
		{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 3, Events: []*tokenwatchv1.TokenEvent{
			tokenEvent("a", "system:node:n", "ok"), tokenEvent("b", "alice"),
		}, Losses: []*tokenwatchv1.LossReport{{Reason: "r"}}}}},
		{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 4, Events: []*tokenwatchv1.TokenEvent{
			tokenEvent("c", "alice"),
		}, Uses: lineageUses(), Counts: lineageCounts()}}},
		heartbeat(),
	} {
		raw, _ := proto.Marshal(m)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkCodec(t, raw) })
}
