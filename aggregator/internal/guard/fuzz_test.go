package guard

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// fakeStream replays decoded messages to the guard without a network.
type fakeStream struct {
	ctx  context.Context
	msgs []*tokenwatchv1.StreamRequest
}

func (f *fakeStream) SetHeader(metadata.MD) error  { return nil }
func (f *fakeStream) SendHeader(metadata.MD) error { return nil }
func (f *fakeStream) SetTrailer(metadata.MD)       {}
func (f *fakeStream) Context() context.Context     { return f.ctx }
func (f *fakeStream) SendMsg(any) error            { return nil }
func (f *fakeStream) RecvMsg(m any) error {
	if len(f.msgs) == 0 {
		return context.Canceled
	}
	proto.Merge(m.(*tokenwatchv1.StreamRequest), f.msgs[0])
	f.msgs = f.msgs[1:]
	return nil
}

// FuzzStreamMessages feeds arbitrary wire bytes, decoded as stream messages,
// through the guard's interceptor: it never panics, never blocks past its
// throttle bound, and leaves no stream or cluster slot behind.
func FuzzStreamMessages(f *testing.F) {
	seed := func(msgs ...*tokenwatchv1.StreamRequest) {
		var data []byte
		for _, m := range msgs {
			b, _ := proto.Marshal(m)
			data = append(data, byte(len(b)>>8), byte(len(b)))
			data = append(data, b...)
		}
		f.Add(data)
	}
	hello := &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Hello{Hello: &tokenwatchv1.Hello{Cluster: "a", Node: "n"}}}
	batch := &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Batch{Batch: &tokenwatchv1.Batch{Seq: 1,
		Events: []*tokenwatchv1.TokenEvent{{AuditId: "x"}, {AuditId: "y"}}}}}
	hb := &tokenwatchv1.StreamRequest{Msg: &tokenwatchv1.StreamRequest_Heartbeat{Heartbeat: &tokenwatchv1.Heartbeat{}}}
	seed(hello, batch, hb, batch)
	seed(batch, hello, hello)
	seed(hello, hello, batch, batch, batch)

	f.Fuzz(func(t *testing.T, data []byte) {
		var msgs []*tokenwatchv1.StreamRequest
		for len(data) >= 2 && len(msgs) < 64 {
			n := int(data[0])<<8 | int(data[1])
			data = data[2:]
			n = min(n, len(data))
			m := &tokenwatchv1.StreamRequest{}
			if proto.Unmarshal(data[:n], m) == nil {
				msgs = append(msgs, m)
			}
			data = data[n:]
		}
		g, err := newGuard(Config{
			MaxStreams: 4, MaxStreamsPerCluster: 2, MaxEventsPerBatch: 4, MaxLossesPerBatch: 2,
			EventsPerSecond: 1e6, EventBurst: 8, MessagesPerSecond: 1e6, MessageBurst: 8,
			MaxThrottle: time.Millisecond,
		}.withDefaults(), nil)
		if err != nil {
			t.Fatal(err)
		}
		ss := &fakeStream{ctx: context.Background(), msgs: msgs}
		info := &grpc.StreamServerInfo{FullMethod: tokenwatchv1.AuditStreamService_Stream_FullMethodName}
		_ = g.StreamInterceptor(nil, ss, info, func(_ any, s grpc.ServerStream) error {
			for {
				if err := s.RecvMsg(new(tokenwatchv1.StreamRequest)); err != nil {
					return err
				}
			}
		})
		if len(g.streams) != 0 || len(g.clusters) != 0 || len(g.owners) != 0 {
			t.Fatalf("after the stream: %d stream slots, clusters %v, certificates %v held", len(g.streams), g.clusters, g.owners)
		}
		for k, a := range g.agents {
			if a.streams != 0 {
				t.Fatalf("agent %v still has %d streams", k, a.streams)
			}
		}
	})
}
