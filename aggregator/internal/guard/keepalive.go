package guard

import (
	"bytes"
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// goAwayTooManyPings is the tail of the GOAWAY frame gRPC's server writes when
// a client pings more often than the keepalive policy allows: error code
// ENHANCE_YOUR_CALM (0xb), then gRPC's debug data. gRPC enforces the policy
// itself and reports it nowhere else, so the guard watches for this frame on
// the connection, after TLS.
var goAwayTooManyPings = []byte("\x00\x00\x00\x0btoo_many_pings")

// Credentials wraps the server's transport credentials (nil: plaintext) so
// that keepalive-policy violations are counted as
// tokenwatch_aggregator_limit_violations_total{reason="keepalive"}, and
// failed handshakes as tokenwatch_aggregator_tls_handshakes_rejected_total
// {reason} and logged (rate-limited).
func (g *Guard) Credentials(creds credentials.TransportCredentials) credentials.TransportCredentials {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &watchedCreds{TransportCredentials: creds, g: g}
}

type watchedCreds struct {
	credentials.TransportCredentials
	g *Guard
}

func (c *watchedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.g.handshakeRejected(raw.RemoteAddr(), err)
		return conn, info, err
	}
	return &watchedConn{Conn: conn, onGoAway: func() { c.g.m.violation(ReasonKeepalive) }}, info, nil
}

func (c *watchedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.TransportCredentials.ClientHandshake(ctx, authority, raw)
}

func (c *watchedCreds) Clone() credentials.TransportCredentials {
	return &watchedCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// watchedConn looks for goAwayTooManyPings in what the server writes, also
// across two writes, and reports it once.
type watchedConn struct {
	net.Conn
	onGoAway func()

	mu   sync.Mutex
	seen bool
	tail []byte // the last len(goAwayTooManyPings)-1 bytes written
}

func (c *watchedConn) Write(p []byte) (int, error) {
	c.watch(p)
	return c.Conn.Write(p)
}

func (c *watchedConn) watch(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen {
		return
	}
	keep := len(goAwayTooManyPings) - 1
	found := bytes.Contains(p, goAwayTooManyPings)
	if !found && len(c.tail) > 0 {
		joined := append(append([]byte(nil), c.tail...), p[:min(len(p), keep)]...)
		found = bytes.Contains(joined, goAwayTooManyPings)
	}
	if found {
		c.seen = true
		c.tail = nil
		c.onGoAway()
		return
	}
	if len(p) >= keep {
		c.tail = append(c.tail[:0], p[len(p)-keep:]...)
	} else {
		c.tail = append(c.tail, p...)
		if len(c.tail) > keep {
			c.tail = c.tail[len(c.tail)-keep:]
		}
	}
}
