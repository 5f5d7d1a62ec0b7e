package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Reasons a server-side TLS handshake fails, the values of the aggregator's
// tokenwatch_aggregator_tls_handshakes_rejected_total{reason} label.
const (
	HandshakeNotTLS         = "not_tls"               // plaintext (an --insecure agent) or another protocol
	HandshakeNoCertificate  = "no_client_certificate" // the client presented none
	HandshakeUnknownCA      = "unknown_ca"            // not signed by --tls-client-ca
	HandshakeExpired        = "certificate_expired"   // past its NotAfter
	HandshakeNotYetValid    = "certificate_not_yet_valid"
	HandshakeBadUsage       = "no_client_auth_usage" // lacks the client-auth extended key usage
	HandshakeBadCertificate = "bad_certificate"      // other verification failures
	HandshakePeerRejected   = "server_certificate_rejected"
	HandshakeTimeout        = "timeout"
	HandshakeClosed         = "connection_closed" // closed or reset mid-handshake (also TCP probes)
	HandshakeOther          = "other"
)

// HandshakeReasons lists every value HandshakeReason returns.
var HandshakeReasons = []string{HandshakeNotTLS, HandshakeNoCertificate, HandshakeUnknownCA, HandshakeExpired,
	HandshakeNotYetValid, HandshakeBadUsage, HandshakeBadCertificate, HandshakePeerRejected, HandshakeTimeout,
	HandshakeClosed, HandshakeOther}

// HandshakeReason classifies the error of a failed server-side TLS
// handshake (as crypto/tls returns it) for metrics and logs.
func HandshakeReason(err error) string {
	var rh tls.RecordHeaderError
	var ua x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	var alert tls.AlertError
	var ne net.Error
	switch {
	case errors.As(err, &rh):
		return HandshakeNotTLS
	case errors.As(err, &ua):
		return HandshakeUnknownCA
	case errors.As(err, &inv):
		switch inv.Reason {
		case x509.Expired:
			if inv.Cert != nil && time.Now().Before(inv.Cert.NotBefore) {
				return HandshakeNotYetValid
			}
			return HandshakeExpired
		case x509.IncompatibleUsage:
			return HandshakeBadUsage
		}
		return HandshakeBadCertificate
	case errors.As(err, &alert):
		// The client refused the server's certificate and said so.
		return HandshakePeerRejected
	case strings.Contains(err.Error(), "client didn't provide a certificate"):
		return HandshakeNoCertificate
	case strings.Contains(err.Error(), "remote error: tls:"):
		return HandshakePeerRejected
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE):
		return HandshakeClosed
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return HandshakeTimeout
	case strings.Contains(err.Error(), "x509:"), strings.Contains(err.Error(), "tls: failed to verify"):
		return HandshakeBadCertificate
	}
	return HandshakeOther
}

// ErrRejectedByServer marks a client connection that the server closed
// right after the TLS handshake: with TLS 1.3 the server verifies the
// client's certificate only after the client has finished, so a refused
// certificate shows on the client as an alert or a closed connection
// instead of a handshake error.
var ErrRejectedByServer = errors.New("the aggregator closed the connection after the TLS handshake: it did not accept this agent's certificate")

// awaitServerTimeout bounds the wait for the server's first bytes after a
// client handshake; a server that says nothing by then is not judged.
const awaitServerTimeout = 10 * time.Second

// awaitServer reads the first bytes the server sends after the handshake
// (a gRPC server sends its HTTP/2 SETTINGS at once): an alert or a closed
// connection means the server refused this client's certificate, and is
// returned as ErrRejectedByServer with the alert. The bytes read are
// replayed to the caller.
func awaitServer(ctx context.Context, conn net.Conn) (net.Conn, error) {
	deadline := time.Now().Add(awaitServerTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return conn, nil
	}
	buf := make([]byte, 1)
	n, err := conn.Read(buf)
	_ = conn.SetReadDeadline(time.Time{})
	var ne net.Error
	switch {
	case n > 0:
		return &prefixConn{Conn: conn, prefix: buf[:n]}, nil
	case err == nil, errors.As(err, &ne) && ne.Timeout():
		return conn, nil
	}
	conn.Close()
	return nil, fmt.Errorf("%w (%w)", ErrRejectedByServer, err)
}

// prefixConn returns prefix before the connection's own bytes.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// Problems an agent finds with its own certificate at start.
var (
	// ErrNotClientCert: the certificate's extended key usage excludes
	// client authentication; the aggregator would refuse every handshake.
	ErrNotClientCert = errors.New("certificate lacks the client-auth extended key usage")
	// ErrExpired and ErrNotYetValid concern the validity period only: a
	// renewal heals them.
	ErrExpired     = errors.New("certificate has expired")
	ErrNotYetValid = errors.New("certificate is not valid yet")
)

// CheckAgentCertificate checks an agent's own certificate against the
// cluster it reports for: it must carry exactly one SPIFFE ID, of the form
// spiffe://<any trust domain>/cluster/<cluster>, and allow client
// authentication. It does not look at the validity period (see
// CheckValidity): that heals by renewal, these do not.
func CheckAgentCertificate(cert *x509.Certificate, cluster string) error {
	ids := spiffeIDs(cert)
	switch len(ids) {
	case 0:
		return fmt.Errorf("%w (want %s)", ErrNoClusterID, ClusterID("<trust-domain>", cluster))
	case 1:
	default:
		return fmt.Errorf("%w: %d URI SANs", ErrSeveralIDs, len(ids))
	}
	id := ids[0].String()
	_, segs, err := parseSPIFFEID(id)
	if err != nil {
		return err
	}
	if len(segs) != 2 || segs[0] != "cluster" {
		return fmt.Errorf("%w: %q is not /cluster/<name>", ErrNoClusterID, id)
	}
	if segs[1] != cluster {
		return fmt.Errorf("%w: certificate binds cluster %q (%s), --cluster is %q", ErrClusterMismatch, segs[1], id, cluster)
	}
	if !clientAuthAllowed(cert) {
		return fmt.Errorf("%w (it has %s)", ErrNotClientCert, usages(cert))
	}
	return nil
}

func clientAuthAllowed(cert *x509.Certificate) bool {
	if len(cert.ExtKeyUsage) == 0 && len(cert.UnknownExtKeyUsage) == 0 {
		return true // no EKU extension: any usage
	}
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

func usages(cert *x509.Certificate) string {
	names := map[x509.ExtKeyUsage]string{x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageCodeSigning: "codeSigning",
		x509.ExtKeyUsageEmailProtection: "emailProtection", x509.ExtKeyUsageTimeStamping: "timeStamping", x509.ExtKeyUsageOCSPSigning: "OCSPSigning"}
	var out []string
	for _, u := range cert.ExtKeyUsage {
		if n, ok := names[u]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("usage %d", u))
		}
	}
	for _, oid := range cert.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	return strings.Join(out, ", ")
}

// CheckValidity reports ErrExpired or ErrNotYetValid when now is outside
// cert's validity period, saying when it ends or begins.
func CheckValidity(cert *x509.Certificate, now time.Time) error {
	switch {
	case now.After(cert.NotAfter):
		return fmt.Errorf("%w: not after %s", ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.NotBefore):
		return fmt.Errorf("%w: not before %s", ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// LoadLeaf reads the first certificate of the PEM file path.
func LoadLeaf(path string) (*x509.Certificate, error) {
	certs, err := loadCertificates(path)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// NotAfter returns the earliest NotAfter among the certificates of the PEM
// file path (a certificate chain or a CA bundle): when the first of them
// expires, handshakes that need it fail.
func NotAfter(path string) (time.Time, error) {
	certs, err := loadCertificates(path)
	if err != nil {
		return time.Time{}, err
	}
	t := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t, nil
}

func loadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	return certs, nil
}
