package agent

import (
	"fmt"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

// Classes of failed attempts that concern certificates (see
// sender.Failure), beside the sender's own.
const (
	classCertNotValid   = "certificate_not_valid"
	classCertRejected   = "certificate_rejected"
	classCertMismatch   = "certificate_mismatch"
	classServerDistrust = "aggregator_certificate_untrusted"
	classPlaintext      = "plaintext_refused"
)

// CheckCertificate checks the agent's own certificate (--tls-cert) against
// --cluster, for what no retry can heal: its SPIFFE ID must be
// spiffe://<trust-domain>/cluster/<--cluster>, alone, and it must allow
// client authentication. A certificate outside its validity period passes:
// a renewal heals that, and the agent waits for it. Without mTLS it
// checks nothing.
func (c *Config) CheckCertificate() error {
	if c.Insecure || c.TLSCert == "" {
		return nil
	}
	leaf, err := tlsconf.LoadLeaf(c.TLSCert)
	if err != nil {
		return fmt.Errorf("--tls-cert: %w", err)
	}
	if err := tlsconf.CheckAgentCertificate(leaf, c.Cluster); err != nil {
		return fmt.Errorf("--tls-cert %s: %w", c.TLSCert, err)
	}
	return nil
}

// warnValidity logs at start when the agent's certificate is outside its
// validity period: the agent stays up, not ready, and re-reads the
// certificate at each attempt until a renewal replaces it.
func warnValidity(c Config) {
	if c.Insecure {
		return
	}
	leaf, err := tlsconf.LoadLeaf(c.TLSCert)
	if err != nil {
		return
	}
	if err := tlsconf.CheckValidity(leaf, time.Now()); err != nil {
		c.Logger.Warn("agent certificate is not valid now; not ready until it is renewed (re-read at each attempt)",
			"cert", c.TLSCert, "err", err, "not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
	}
}

// classifier names failed attempts the sender cannot judge alone: what
// the agent's own certificate, the TLS handshake or a plaintext connection
// reveal. Anything else is left to sender.DefaultClassify.
func classifier(c Config) func(error) sender.Failure {
	return func(err error) sender.Failure {
		msg := err.Error()
		beforeWelcome := strings.Contains(msg, "open stream:") || strings.Contains(msg, "wait for welcome:")
		if c.Insecure {
			if beforeWelcome && (strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe")) {
				return sender.Failure{Class: classPlaintext, Permanent: true,
					Message: "the aggregator closed this plaintext connection at once: it probably requires mTLS; give --tls-cert, --tls-key and --tls-ca instead of --insecure (retrying at the maximum backoff)"}
			}
			return sender.Failure{}
		}
		if leaf, lerr := tlsconf.LoadLeaf(c.TLSCert); lerr == nil {
			if verr := tlsconf.CheckValidity(leaf, time.Now()); verr != nil {
				return sender.Failure{Class: classCertNotValid,
					Message: "agent certificate is not valid now (" + verr.Error() + "); waiting for its renewal, re-read at each attempt"}
			}
			if cerr := tlsconf.CheckAgentCertificate(leaf, c.Cluster); cerr != nil {
				return sender.Failure{Class: classCertMismatch, Permanent: true,
					Message: "agent certificate no longer fits --cluster (" + cerr.Error() + "); fix the certificate (retrying at the maximum backoff)"}
			}
		}
		switch {
		case strings.Contains(msg, tlsconf.ErrRejectedByServer.Error()):
			return sender.Failure{Class: classCertRejected, Permanent: true,
				Message: "the aggregator rejected this agent's certificate in the TLS handshake: is it signed by a CA in the aggregator's --tls-client-ca? (retrying at the maximum backoff)"}
		case strings.Contains(msg, "x509:") || strings.Contains(msg, "tls: failed to verify"):
			return sender.Failure{Class: classServerDistrust, Permanent: true,
				Message: "this agent does not trust the aggregator's certificate: check --tls-ca and that the certificate names the --aggregator host (retrying at the maximum backoff)"}
		}
		return sender.Failure{}
	}
}
