package ingest

import (
	"sync"
	"unsafe"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/pipeline"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// FieldScreener judges an event by the fields the rule reads
// (*pipeline.Pipeline is one). It must not retain f or its strings.
type FieldScreener interface {
	ScreenFields(f *pipeline.Fields) int
}

var _ FieldScreener = (*pipeline.Pipeline)(nil)

// Placeholders the codec leaves in a batch for the events it screened out
// while decoding: the batch keeps its length (the guard counts it), nothing
// of those events is decoded. batch counts them and never converts them.
var (
	screenedExcluded   = &tokenwatchv1.TokenEvent{}
	screenedNotMatched = &tokenwatchv1.TokenEvent{}
)

// codec is the server's gRPC codec: protobuf, except that the events of a
// StreamRequest's Batch are judged on their encoded bytes first, and only
// those that may alert are decoded. About 99% of the token creates a
// control plane logs are by system identities the exclusions drop, and
// decoding them (every string copied and UTF-8 checked, two maps built) was
// most of the aggregator's CPU. Anything irregular (a field repeated where
// a well-formed sender writes it once, an unexpected wire type) falls back
// to the plain protobuf decode, which also reports malformed input.
//
// One difference: a screened-out event is not checked for invalid UTF-8 in
// the string fields the rule does not read; it is dropped either way.
type codec struct {
	proto  encoding.CodecV2
	screen FieldScreener
}

func newCodec(s FieldScreener) *codec {
	return &codec{proto: encoding.GetCodecV2("proto"), screen: s}
}

func (c *codec) Name() string { return "proto" }

func (c *codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c *codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*tokenwatchv1.StreamRequest)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(flatPool)
	defer buf.Free()
	b := buf.ReadOnlyData()
	if batch, ok := c.batchRequest(b); ok {
		proto.Reset(req)
		req.Msg = &tokenwatchv1.StreamRequest_Batch{Batch: batch}
		return nil
	}
	return proto.Unmarshal(b, req)
}

// batchRequest decodes a StreamRequest that is exactly one Batch, screening
// its events; ok is false for anything else.
func (c *codec) batchRequest(b []byte) (*tokenwatchv1.Batch, bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != 2 || typ != protowire.BytesType {
		return nil, false
	}
	body, m := protowire.ConsumeBytes(b[n:])
	if m < 0 || n+m != len(b) {
		return nil, false
	}
	batch := &tokenwatchv1.Batch{}
	var seen1 bool
	scratch := &pipeline.Fields{Groups: make([]string, 0, 8)}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return nil, false
		}
		body = body[n:]
		switch {
		case num == 1 && typ == protowire.VarintType && !seen1:
			v, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return nil, false
			}
			batch.Seq, seen1, body = v, true, body[n:]
		case num == 2 && typ == protowire.BytesType:
			ev, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return nil, false
			}
			body = body[n:]
			e, ok := c.event(ev, scratch)
			if !ok {
				return nil, false
			}
			batch.Events = append(batch.Events, e)
		case num == 3 && typ == protowire.BytesType:
			lb, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return nil, false
			}
			body = body[n:]
			l := &tokenwatchv1.LossReport{}
			if proto.Unmarshal(lb, l) != nil {
				return nil, false
			}
			batch.Losses = append(batch.Losses, l)
		default:
			return nil, false
		}
	}
	return batch, true
}

// event screens one encoded TokenEvent and decodes it when it may alert.
// f is scratch space, reset here.
func (c *codec) event(b []byte, f *pipeline.Fields) (*tokenwatchv1.TokenEvent, bool) {
	clear(f.Groups[:cap(f.Groups)])
	*f = pipeline.Fields{Groups: f.Groups[:0]}
	if !scanEvent(b, f) {
		return nil, false
	}
	switch c.screen.ScreenFields(f) {
	case pipeline.DropExcluded:
		return screenedExcluded, true
	case pipeline.DropNotMatched:
		return screenedNotMatched, true
	}
	e := &tokenwatchv1.TokenEvent{}
	if proto.Unmarshal(b, e) != nil {
		return nil, false
	}
	return e, true
}

// scanEvent fills f from an encoded TokenEvent without copying: the
// strings alias b and live only as long as the screening. Singular fields
// take their last occurrence and messages merge, as protobuf decodes them.
func scanEvent(b []byte, f *pipeline.Fields) bool {
	return scanFields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		if typ != protowire.BytesType {
			return true
		}
		switch num {
		case 5:
			f.Verb = alias(v)
		case 7:
			f.HasObjectRef = true
			return scanFields(v, func(num protowire.Number, typ protowire.Type, v []byte) bool {
				if typ != protowire.BytesType {
					return true
				}
				switch num {
				case 1:
					f.Resource = alias(v)
				case 2:
					f.Namespace = alias(v)
				case 3:
					f.Name = alias(v)
				case 6:
					f.Subresource = alias(v)
				}
				return true
			})
		case 8:
			f.HasUser = true
			return scanFields(v, func(num protowire.Number, typ protowire.Type, v []byte) bool {
				if typ != protowire.BytesType {
					return true
				}
				switch num {
				case 2:
					f.Username = alias(v)
				case 4:
					f.Groups = append(f.Groups, alias(v))
				}
				return true
			})
		}
		return true
	})
}

// scanFields calls fn for each field of an encoded message with its value
// bytes (for varints and fixed values, their encoding); it reports false on
// malformed input or when fn does.
func scanFields(b []byte, fn func(protowire.Number, protowire.Type, []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		v := b[:m]
		if typ == protowire.BytesType {
			var k int
			v, k = protowire.ConsumeBytes(b)
			if k < 0 {
				return false
			}
		}
		if !fn(num, typ, v) {
			return false
		}
		b = b[m:]
	}
	return true
}

// alias returns b as a string without copying; b must not change while the
// string is in use.
func alias(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// flatPool holds the buffers a message is copied into when gRPC received it
// in several pieces. Unlike gRPC's default pool it does not zero a buffer
// before reuse (the copy overwrites what is used), and it hands out one of
// the message's size, where the default pool takes and clears 1 MiB for a
// batch of a few hundred KiB.
var flatPool mem.BufferPool = &dirtyPool{}

// dirtyPool is a mem.BufferPool of reused buffers, not zeroed.
type dirtyPool struct{ p sync.Pool }

func (d *dirtyPool) Get(n int) *[]byte {
	if b, ok := d.p.Get().(*[]byte); ok {
		if cap(*b) >= n {
			*b = (*b)[:n]
			return b
		}
		d.p.Put(b)
	}
	b := make([]byte, n)
	return &b
}

func (d *dirtyPool) Put(b *[]byte) { d.p.Put(b) }
