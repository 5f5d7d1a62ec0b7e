package leak

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// Recorder is a TCP proxy on loopback that keeps every byte it forwards,
// per connection and direction: what the agent put on the wire.
type Recorder struct {
	Addr     string
	upstream string
	lis      net.Listener

	mu    sync.Mutex
	conns []*recConn
	open  map[net.Conn]bool

	wg sync.WaitGroup
}

type recConn struct {
	mu       sync.Mutex
	up, down bytes.Buffer // client->server, server->client
}

// StartRecorder proxies a free loopback port to upstream until the test ends.
func StartRecorder(t testing.TB, upstream string) *Recorder {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("recorder listen: %v", err)
	}
	r := &Recorder{Addr: lis.Addr().String(), upstream: upstream, lis: lis, open: map[net.Conn]bool{}}
	r.wg.Go(r.accept)
	t.Cleanup(r.Close)
	return r
}

func (r *Recorder) accept() {
	for {
		c, err := r.lis.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() { r.serve(c) })
	}
}

func (r *Recorder) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open == nil {
		return false
	}
	r.open[c] = true
	return true
}

func (r *Recorder) serve(client net.Conn) {
	defer client.Close()
	if !r.track(client) {
		return
	}
	server, err := net.Dial("tcp", r.upstream)
	if err != nil {
		return
	}
	defer server.Close()
	if !r.track(server) {
		return
	}
	rc := &recConn{}
	r.mu.Lock()
	r.conns = append(r.conns, rc)
	r.mu.Unlock()
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, buf *bytes.Buffer) {
		_, _ = io.Copy(io.MultiWriter(dst, lockedWriter{&rc.mu, buf}), src)
		// One side ended: end the other too, as a plain TCP hop would.
		_ = dst.Close()
		_ = src.Close()
	}
	wg.Go(func() { pipe(server, client, &rc.up) })
	wg.Go(func() { pipe(client, server, &rc.down) })
	wg.Wait()
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// Close stops accepting, cuts every open connection and waits for the
// proxy's goroutines.
func (r *Recorder) Close() {
	_ = r.lis.Close()
	r.mu.Lock()
	for c := range r.open {
		_ = c.Close()
	}
	r.open = nil
	r.mu.Unlock()
	r.wg.Wait()
}

// Capture is one recorded connection.
type Capture struct{ Up, Down []byte }

// Captures returns copies of the bytes recorded so far.
func (r *Recorder) Captures() []Capture {
	r.mu.Lock()
	conns := append([]*recConn(nil), r.conns...)
	r.mu.Unlock()
	out := make([]Capture, 0, len(conns))
	for _, c := range conns {
		c.mu.Lock()
		out = append(out, Capture{Up: bytes.Clone(c.up.Bytes()), Down: bytes.Clone(c.down.Bytes())})
		c.mu.Unlock()
	}
	return out
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// GRPCMessages parses one direction of a plaintext HTTP/2 connection and
// returns the gRPC messages it carried, reassembled from DATA frames per
// stream (a string split across two frames is whole again) and
// decompressed when the gRPC compressed flag is set. A message cut off at
// the end of the capture is returned as far as it goes.
func GRPCMessages(b []byte) ([][]byte, error) {
	b = bytes.TrimPrefix(b, []byte(h2Preface))
	streams := map[uint32]*bytes.Buffer{}
	var order []uint32
	for len(b) > 0 {
		if len(b) < 9 {
			return nil, fmt.Errorf("HTTP/2: %d bytes left, less than a frame header", len(b))
		}
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		typ, flags := b[3], b[4]
		id := binary.BigEndian.Uint32(b[5:9]) & 0x7fffffff
		if len(b) < 9+n {
			n = len(b) - 9 // cut off at the end of the capture
		}
		payload := b[9 : 9+n]
		b = b[9+n:]
		if typ != 0 { // only DATA carries messages
			continue
		}
		if flags&0x8 != 0 && len(payload) > 0 { // PADDED
			pad := int(payload[0])
			payload = payload[1:]
			if pad > len(payload) {
				return nil, errors.New("HTTP/2: padding longer than the frame")
			}
			payload = payload[:len(payload)-pad]
		}
		s, ok := streams[id]
		if !ok {
			s = &bytes.Buffer{}
			streams[id] = s
			order = append(order, id)
		}
		s.Write(payload)
	}
	var msgs [][]byte
	for _, id := range order {
		d := streams[id].Bytes()
		for len(d) >= 5 {
			compressed := d[0] == 1
			n := int(binary.BigEndian.Uint32(d[1:5]))
			d = d[5:]
			m := d[:min(n, len(d))]
			d = d[len(m):]
			if compressed {
				zr, err := gzip.NewReader(bytes.NewReader(m))
				if err != nil {
					return nil, fmt.Errorf("gRPC message on stream %d is compressed, not with gzip: %w", id, err)
				}
				plain, err := io.ReadAll(zr)
				if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
					return nil, fmt.Errorf("gunzip gRPC message on stream %d: %w", id, err)
				}
				m = plain
			}
			msgs = append(msgs, m)
		}
	}
	return msgs, nil
}
