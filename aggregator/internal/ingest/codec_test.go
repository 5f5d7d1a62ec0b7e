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
// they agree: screened events are placeholders with the verdict the decoded
// event gets, the others equal. The codec sees raw in one piece, then in
// three (as gRPC hands over a message received in several frames), copied
// into a reused buffer that still holds another message's bytes.
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
	var got, want tokenwatchv1.StreamRequest
	werr := proto.Unmarshal(raw, &want)
	gerr := c.Unmarshal(data, &got)
	// What the codec kept must not point into the buffer it was given back.
	reused := flatPool.Get(len(raw))
	for i := range *reused {
		(*reused)[i] = 0x5a
	}
	defer flatPool.Put(reused)
	if werr != nil {
		// The codec may drop an event the rule need not read (invalid UTF-8
		// in an unread field) instead of refusing the message.
		return
	}
	if gerr != nil {
		t.Fatalf("codec refused what protobuf decodes: %v", gerr)
	}
	wb, gb := want.GetBatch(), got.GetBatch()
	if wb == nil {
		if diff := cmp.Diff(&want, &got, protocmp.Transform()); diff != "" {
			t.Fatalf("non-batch message differs (-proto +codec):\n%s", diff)
		}
		return
	}
	if gb == nil {
		t.Fatalf("codec gave %v, protobuf a batch", &got)
	}
	if gb.GetSeq() != wb.GetSeq() || len(gb.GetEvents()) != len(wb.GetEvents()) {
		t.Fatalf("seq %d, %d events; protobuf: seq %d, %d events", gb.GetSeq(), len(gb.GetEvents()), wb.GetSeq(), len(wb.GetEvents()))
	}
	if diff := cmp.Diff(wb.GetLosses(), gb.GetLosses(), protocmp.Transform()); diff != "" {
		t.Fatalf("losses differ (-proto +codec):\n%s", diff)
	}
	// Decoded into an inbound, the message comes with the codec's verdicts
	// of the events it decoded, in order, or none when it fell back to
	// protobuf.
	in := &inbound{StreamRequest: new(tokenwatchv1.StreamRequest)}
	if err := c.Unmarshal(data, in); err != nil {
		t.Fatalf("codec refused into an inbound what it decoded: %v", err)
	}
	var decoded []rule.Verdict
	for i, ge := range gb.GetEvents() {
		if _, out := screenedOut(ge); !out {
			decoded = append(decoded, screenProto(wb.GetEvents()[i]))
		}
	}
	if len(in.kept) > 0 {
		if diff := cmp.Diff(decoded, in.kept); diff != "" {
			t.Fatalf("codec's verdicts of the decoded events (-decoded +codec):\n%s", diff)
		}
	}
	for i, we := range wb.GetEvents() {
		// Screened out: the placeholder of its verdict. Otherwise (kept,
		// or decoded by the fallback) the event protobuf decodes.
		ge := gb.GetEvents()[i]
		v := screenProto(we)
		switch {
		case ge == screenedExcluded || ge == screenedNotMatched:
			if (ge == screenedExcluded) != v.Excluded || v.Alerts() {
				t.Fatalf("event %d: screened as excluded=%v, verdict of the decoded event %+v", i, ge == screenedExcluded, v)
			}
		default:
			if diff := cmp.Diff(we, ge, protocmp.Transform()); diff != "" {
				t.Fatalf("event %d differs (-proto +codec):\n%s", i, diff)
			}
		}
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
	tests := []struct {
		name string
		give *tokenwatchv1.StreamRequest
		want []*tokenwatchv1.TokenEvent // nil entries: any decoded event
	}{
		{"batch", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: batch}},
			[]*tokenwatchv1.TokenEvent{screenedExcluded, nil, nil, screenedNotMatched, screenedNotMatched}},
		{"hello", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: "c", Node: "n"}}}, nil},
		{"heartbeat", heartbeat(), nil},
		{"empty batch", &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 1}}}, []*tokenwatchv1.TokenEvent{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := proto.Marshal(tt.give)
			if err != nil {
				t.Fatal(err)
			}
			checkCodec(t, raw)
			var got tokenwatchv1.StreamRequest
			if err := newCodec(fieldRule{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, &got); err != nil {
				t.Fatal(err)
			}
			for i, w := range tt.want {
				if g := got.GetBatch().GetEvents()[i]; w != nil && g != w {
					t.Errorf("event %d = %p, want placeholder %p", i, g, w)
				} else if w == nil && (g == screenedExcluded || g == screenedNotMatched) {
					t.Errorf("event %d screened out, want it decoded", i)
				}
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
		heartbeat(),
	} {
		raw, _ := proto.Marshal(m)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkCodec(t, raw) })
}
