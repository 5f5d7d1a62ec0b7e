package ingest

import (
	"sync"
	"unsafe"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
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
//
// With chains set (lineage enabled), an excluded event whose user
// authenticated with a bound token (a "JTI=" credential ID in user.extra,
// read from the encoded bytes for excluded events only) is kept with its
// verdict: Process decides with the watch set whether it is a chain (which
// alerts despite an exclusion of the default list, rule.Verdict.ByDefault)
// or a use of a watched token (whatever excluded it).
//
// A batch's lineage uses and counts are not screened: they are decoded as
// plain protobuf.
type codec struct {
	proto  encoding.CodecV2
	screen Screener
	chains bool
}

func newCodec(s Screener) *codec {
	return &codec{proto: encoding.GetCodecV2("proto"), screen: s}
}

func (c *codec) Name() string { return "proto" }

func (c *codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

// Unmarshal decodes into an *inbound, screening a batch's events, and
// anything else as plain protobuf.
func (c *codec) Unmarshal(data mem.BufferSlice, v any) error {
	in, ok := v.(*inbound)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	in.screened = screening{}
	buf := data.MaterializeToBuffer(flatPool)
	defer buf.Free()
	b := buf.ReadOnlyData()
	var sc screening
	if batch, ok := c.batchRequest(b, &sc); ok {
		proto.Reset(in.StreamRequest)
		in.Msg = &tokenwatchv1.StreamRequest_Batch{Batch: batch}
		in.screened = sc
		return nil
	}
	return proto.Unmarshal(b, in.StreamRequest)
}

// inbound is what the receiver asks gRPC to decode a stream message into:
// the StreamRequest (embedded, so that the guard checks it as any other)
// and, when the codec screened its batch, what the screening found.
//
// A screened batch keeps one slot per event sent, so that the guard counts
// them all: the slot of an event the codec kept holds it decoded, the slot
// of one it screened out is nil (nothing of it was decoded) and the event
// is counted in screened. prepare takes the verdicts from there instead of
// judging the events again.
type inbound struct {
	*tokenwatchv1.StreamRequest
	screened screening
}

// screening is what the codec found screening a batch's events: the
// verdicts of those it kept, in order, with each one's encoding as it
// arrived (copied out of the receive buffer: a held event is stored in that
// form), and the counts of those it screened out. It is empty for a message
// the codec left to plain protobuf.
type screening struct {
	kept                 []rule.Verdict
	raw                  [][]byte // of the kept events, in order
	excluded, notMatched int
}

// batchRequest decodes a StreamRequest that is exactly one Batch, screening
// its events into sc; ok is false for anything else (sc is then partial).
func (c *codec) batchRequest(b []byte, sc *screening) (*tokenwatchv1.Batch, bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != fieldBatch || typ != protowire.BytesType {
		return nil, false
	}
	body, m := protowire.ConsumeBytes(b[n:])
	if m < 0 || n+m != len(b) {
		return nil, false
	}
	batch := &tokenwatchv1.Batch{}
	var seen1 bool
	scratch := &rule.Subject{Groups: make([]string, 0, 8)}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return nil, false
		}
		body = body[n:]
		switch {
		case num == fieldBatchSeq && typ == protowire.VarintType && !seen1:
			v, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return nil, false
			}
			batch.Seq, seen1, body = v, true, body[n:]
		case num == fieldBatchEvents && typ == protowire.BytesType:
			ev, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return nil, false
			}
			body = body[n:]
			e, ok := c.event(ev, scratch, sc)
			if !ok {
				return nil, false
			}
			batch.Events = append(batch.Events, e)
		case typ == protowire.BytesType && plainBatchField(num):
			n := plainField(body, num, batch)
			if n < 0 {
				return nil, false
			}
			body = body[n:]
		default:
			return nil, false
		}
	}
	return batch, true
}

// plainBatchField reports whether num is a Batch field the codec decodes
// as plain protobuf (plainField).
func plainBatchField(num protowire.Number) bool {
	switch num {
	case fieldBatchLosses, fieldBatchUses, fieldBatchCounts:
		return true
	}
	return false
}

// plainField decodes one loss report, lineage use or use count (field num
// of a Batch, its value at the start of b) as plain protobuf, appends it
// to batch and returns the bytes it took, negative when malformed.
func plainField(b []byte, num protowire.Number, batch *tokenwatchv1.Batch) int {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return n
	}
	var err error
	switch num {
	case fieldBatchLosses:
		l := &tokenwatchv1.LossReport{}
		err = proto.Unmarshal(v, l)
		batch.Losses = append(batch.Losses, l)
	case fieldBatchUses:
		u := &tokenwatchv1.LineageEvent{}
		err = proto.Unmarshal(v, u)
		batch.Uses = append(batch.Uses, u)
	default:
		c := &tokenwatchv1.UseCount{}
		err = proto.Unmarshal(v, c)
		batch.Counts = append(batch.Counts, c)
	}
	if err != nil {
		return -1
	}
	return n
}

// event screens one encoded TokenEvent and decodes it when it may alert,
// adding its verdict to sc; a screened-out event is only counted in sc and
// its slot is nil. sub is scratch space, reset here.
func (c *codec) event(b []byte, sub *rule.Subject, sc *screening) (*tokenwatchv1.TokenEvent, bool) {
	clear(sub.Groups[:cap(sub.Groups)])
	*sub = rule.Subject{Groups: sub.Groups[:0]}
	if !scanEvent(b, sub) {
		return nil, false
	}
	v := c.screen.Screen(sub)
	switch {
	case v.Alerts():
	case c.chains && lineageCandidate(v) && scanCredentialJTI(b):
		// excluded, authenticated with a token: Process decides
	case v.Excluded:
		sc.excluded++
		return nil, true
	default:
		sc.notMatched++
		return nil, true
	}
	e := &tokenwatchv1.TokenEvent{}
	if proto.Unmarshal(b, e) != nil {
		return nil, false
	}
	sc.kept = append(sc.kept, v)
	sc.raw = append(sc.raw, append([]byte(nil), b...))
	return e, true
}

// Field numbers of the fields scanEvent reads, from the generated
// descriptors.
var (
	fieldVerb      = fieldNumber((*tokenwatchv1.TokenEvent)(nil), "verb")
	fieldObjectRef = fieldNumber((*tokenwatchv1.TokenEvent)(nil), "object_ref")
	fieldUser      = fieldNumber((*tokenwatchv1.TokenEvent)(nil), "user")
	fieldResource  = fieldNumber((*tokenwatchv1.ObjectRef)(nil), "resource")
	fieldSubres    = fieldNumber((*tokenwatchv1.ObjectRef)(nil), "subresource")
	fieldNamespace = fieldNumber((*tokenwatchv1.ObjectRef)(nil), "namespace")
	fieldName      = fieldNumber((*tokenwatchv1.ObjectRef)(nil), "name")
	fieldUsername  = fieldNumber((*tokenwatchv1.UserInfo)(nil), "username")
	fieldGroups    = fieldNumber((*tokenwatchv1.UserInfo)(nil), "groups")

	// Of user.extra, for scanCredentialJTI: the map's entries, their key
	// and value, and the value's strings.
	fieldExtra      = fieldNumber((*tokenwatchv1.UserInfo)(nil), "extra")
	fieldExtraKey   = mapField((*tokenwatchv1.UserInfo)(nil), "extra").MapKey().Number()
	fieldExtraValue = mapField((*tokenwatchv1.UserInfo)(nil), "extra").MapValue().Number()
	fieldValues     = fieldNumber((*tokenwatchv1.StringList)(nil), "values")

	// Of a StreamRequest and a Batch, for batchRequest.
	fieldBatch       = fieldNumber((*tokenwatchv1.StreamRequest)(nil), "batch")
	fieldBatchSeq    = fieldNumber((*tokenwatchv1.Batch)(nil), "seq")
	fieldBatchEvents = fieldNumber((*tokenwatchv1.Batch)(nil), "events")
	fieldBatchLosses = fieldNumber((*tokenwatchv1.Batch)(nil), "losses")
	fieldBatchUses   = fieldNumber((*tokenwatchv1.Batch)(nil), "uses")
	fieldBatchCounts = fieldNumber((*tokenwatchv1.Batch)(nil), "counts")
)

// fieldNumber is the number of m's field name; it panics, at start-up, when
// the generated code has no such field.
func fieldNumber(m proto.Message, name protoreflect.Name) protowire.Number {
	f := m.ProtoReflect().Descriptor().Fields().ByName(name)
	if f == nil {
		panic("ingest codec: no field " + string(name) + " in " + string(m.ProtoReflect().Descriptor().FullName()))
	}
	return f.Number()
}

// mapField is m's map field name; it panics, at start-up, when the
// generated code has no such map.
func mapField(m proto.Message, name protoreflect.Name) protoreflect.FieldDescriptor {
	f := m.ProtoReflect().Descriptor().Fields().ByName(name)
	if f == nil || !f.IsMap() {
		panic("ingest codec: no map " + string(name) + " in " + string(m.ProtoReflect().Descriptor().FullName()))
	}
	return f
}

// scanFields with a fn that looks only at fields of bytes type.
func scanBytesFields(b []byte, fn func(num protowire.Number, v []byte) bool) bool {
	return scanFields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		return typ != protowire.BytesType || fn(num, v)
	})
}

// scanCredentialJTI reports whether the encoded TokenEvent b's user
// authenticated with a bound token: a "JTI=<id>" value under user.extra's
// credential-id key (lineage.CredentialJTI on the decoded event). It
// copies nothing; malformed input reports false.
func scanCredentialJTI(b []byte) bool {
	found := false
	scanBytesFields(b, func(num protowire.Number, v []byte) bool {
		if num != fieldUser {
			return true
		}
		return scanBytesFields(v, func(num protowire.Number, entry []byte) bool {
			if num == fieldExtra && extraHasJTI(entry) {
				found = true
			}
			return !found
		})
	})
	return found
}

// extraHasJTI reports whether a user.extra map entry is the credential ID
// holding a "JTI=" value.
func extraHasJTI(entry []byte) bool {
	var key string
	var values [][]byte
	scanBytesFields(entry, func(num protowire.Number, v []byte) bool {
		switch num {
		case fieldExtraKey:
			key = alias(v)
		case fieldExtraValue:
			values = append(values, v)
		}
		return true
	})
	if key != lineage.ExtraCredentialID {
		return false
	}
	found := false
	for _, list := range values {
		scanBytesFields(list, func(num protowire.Number, v []byte) bool {
			if num == fieldValues && len(v) > len(jtiPrefix) && string(v[:len(jtiPrefix)]) == jtiPrefix {
				found = true
			}
			return !found
		})
	}
	return found
}

// jtiPrefix starts the credential ID of a bound token.
const jtiPrefix = "JTI="

// lineageCandidate reports whether a token create judged v, when made
// with a bound token, still matters to lineage: it matches and is
// excluded (a chain when only the default list excludes it, a use of the
// token it was made with either way). One that alerts is kept anyway.
func lineageCandidate(v rule.Verdict) bool {
	return v.Match && v.Excluded
}

// scanEvent fills s from an encoded TokenEvent without copying: the
// strings alias b and live only as long as the screening. Singular fields
// take their last occurrence and messages merge, as protobuf decodes them.
func scanEvent(b []byte, s *rule.Subject) bool {
	return scanFields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		if typ != protowire.BytesType {
			return true
		}
		switch num {
		case fieldVerb:
			s.Verb = alias(v)
		case fieldObjectRef:
			return scanFields(v, func(num protowire.Number, typ protowire.Type, v []byte) bool {
				if typ != protowire.BytesType {
					return true
				}
				switch num {
				case fieldResource:
					s.Resource = alias(v)
				case fieldNamespace:
					s.Namespace = alias(v)
				case fieldName:
					s.Name = alias(v)
				case fieldSubres:
					s.Subresource = alias(v)
				}
				return true
			})
		case fieldUser:
			return scanFields(v, func(num protowire.Number, typ protowire.Type, v []byte) bool {
				if typ != protowire.BytesType {
					return true
				}
				switch num {
				case fieldUsername:
					s.User = alias(v)
				case fieldGroups:
					s.Groups = append(s.Groups, alias(v))
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
