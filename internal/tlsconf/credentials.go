package tlsconf

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc/credentials"
)

// ClientCredentials returns gRPC transport credentials for the agent. Each
// new connection builds its TLS configuration afresh: the client certificate,
// key and the CA bundle in caFile (system roots when empty) are re-read when
// they changed on disk, and the server certificate is verified by crypto/tls
// against the target's host name or IP address. After the handshake it
// waits for the server's first bytes, so that a server refusing the client's
// certificate (which TLS 1.3 reveals only then) fails the handshake with
// ErrRejectedByServer and the server's alert rather than a later EOF.
func ClientCredentials(certFile, keyFile, caFile string, logger *slog.Logger) (credentials.TransportCredentials, error) {
	c, roots, err := newClient(certFile, keyFile, caFile, logger)
	if err != nil {
		return nil, err
	}
	return &reloadingCreds{
		TransportCredentials: credentials.NewTLS(c.config(roots)),
		client:               c,
		logger:               orDiscard(logger),
	}, nil
}

// reloadingCreds delegates to credentials.NewTLS with a configuration built
// for each handshake, so a rotated CA bundle is honoured without a restart.
type reloadingCreds struct {
	credentials.TransportCredentials // Info, ServerHandshake (unused by a client)
	client                           *client
	logger                           *slog.Logger
	serverName                       string
}

func (r *reloadingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	roots, err := r.client.roots()
	if err != nil {
		return nil, nil, fmt.Errorf("load server CA: %w", err)
	}
	cfg := r.client.config(roots)
	if r.serverName != "" {
		cfg.ServerName = r.serverName
	} else if host, _, err := net.SplitHostPort(authority); err == nil {
		cfg.ServerName = host
	} else {
		cfg.ServerName = authority
	}
	conn, info, err := credentials.NewTLS(cfg).ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	conn, err = awaitServer(ctx, conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, info, nil
}

func (r *reloadingCreds) Clone() credentials.TransportCredentials {
	c := *r
	c.TransportCredentials = r.TransportCredentials.Clone()
	return &c
}

// OverrideServerName is deprecated in gRPC but still part of the interface.
func (r *reloadingCreds) OverrideServerName(name string) error {
	r.serverName = name
	return nil
}
