package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
)

// MinVersion is the lowest TLS version either side accepts. Both ends are
// tokenwatch binaries, so there is no legacy peer to accommodate.
const MinVersion = tls.VersionTLS13

// Server returns a tls.Config for the aggregator: it presents the
// certificate in certFile/keyFile and requires a client certificate that
// verifies against the CA bundle in clientCAFile (with the client-auth
// extended key usage). All three files are re-read on each new handshake
// when their contents changed, so renewed certificates and rotated CAs take
// effect without a restart; connections already established keep theirs.
// A nil logger discards reload messages.
func Server(certFile, keyFile, clientCAFile string, logger *slog.Logger) (*tls.Config, error) {
	logger = orDiscard(logger)
	kp, err := newKeyPair(certFile, keyFile, logger)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	cas, err := newCAPool(clientCAFile, logger)
	if err != nil {
		return nil, fmt.Errorf("server TLS client CA: %w", err)
	}
	base := &tls.Config{
		MinVersion:             MinVersion,
		ClientAuth:             tls.RequireAndVerifyClientCert,
		NextProtos:             []string{"h2"},
		SessionTicketsDisabled: true,
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, err := kp.current()
		if err != nil {
			return nil, err
		}
		pool, err := cas.current()
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			MinVersion:   MinVersion,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			Certificates: []tls.Certificate{*cert},
			ClientCAs:    pool,
			NextProtos:   []string{"h2"},
			// A resumed session is not verified against the current CA
			// bundle; agents hold long-lived connections and gain nothing
			// from resumption.
			SessionTicketsDisabled: true,
		}, nil
	}
	return base, nil
}

// Client returns a tls.Config for the agent: it presents the certificate in
// certFile/keyFile, re-read on each new handshake when the files changed, and
// verifies the aggregator's certificate against the CA bundle in caFile (the
// system roots when caFile is empty) and the server name gRPC fills in from
// the target address. The CA bundle of this bare config is the one read now;
// for gRPC use ClientCredentials, which also re-reads the CA bundle.
// A nil logger discards reload messages.
func Client(certFile, keyFile, caFile string, logger *slog.Logger) (*tls.Config, error) {
	c, roots, err := newClient(certFile, keyFile, caFile, logger)
	if err != nil {
		return nil, err
	}
	return c.config(roots), nil
}

type client struct {
	kp    *keyPair
	roots func() (*x509.CertPool, error)
}

// newClient reads the client's key pair and CA bundle, and returns the
// roots as read now.
func newClient(certFile, keyFile, caFile string, logger *slog.Logger) (*client, *x509.CertPool, error) {
	logger = orDiscard(logger)
	kp, err := newKeyPair(certFile, keyFile, logger)
	if err != nil {
		return nil, nil, fmt.Errorf("client TLS: %w", err)
	}
	c := &client{kp: kp, roots: x509.SystemCertPool}
	if caFile != "" {
		cas, err := newCAPool(caFile, logger)
		if err != nil {
			return nil, nil, fmt.Errorf("client TLS CA: %w", err)
		}
		c.roots = cas.current
	}
	roots, err := c.roots()
	if err != nil {
		return nil, nil, fmt.Errorf("client TLS CA: %w", err)
	}
	return c, roots, nil
}

func (c *client) config(roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion: MinVersion,
		RootCAs:    roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.kp.current()
		},
	}
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
