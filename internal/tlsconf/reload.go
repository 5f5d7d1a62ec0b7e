package tlsconf

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// keyPair is a certificate and key read from files, re-read when the files'
// bytes change.
type keyPair struct {
	certFile, keyFile string
	logger            *slog.Logger

	mu      sync.Mutex
	certPEM []byte
	keyPEM  []byte
	cert    *tls.Certificate
}

func newKeyPair(certFile, keyFile string, logger *slog.Logger) (*keyPair, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("certificate and key files are both required")
	}
	kp := &keyPair{certFile: certFile, keyFile: keyFile, logger: logger}
	if _, err := kp.load(); err != nil {
		return nil, err
	}
	return kp, nil
}

// load returns the current certificate, re-reading the files. When the files
// changed but do not form a valid pair, the last good certificate is kept
// and the error is returned alongside it.
func (kp *keyPair) load() (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(kp.certFile)
	if err != nil {
		return kp.fallback(fmt.Errorf("read certificate: %w", err))
	}
	keyPEM, err := os.ReadFile(kp.keyFile)
	if err != nil {
		return kp.fallback(fmt.Errorf("read key: %w", err))
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.cert != nil && bytes.Equal(certPEM, kp.certPEM) && bytes.Equal(keyPEM, kp.keyPEM) {
		return kp.cert, nil
	}
	cert, err := ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		err = fmt.Errorf("load key pair %s, %s: %w", kp.certFile, kp.keyFile, err)
		return kp.cert, err
	}
	if kp.cert != nil && kp.logger != nil {
		kp.logger.Info("reloaded TLS certificate", "cert", kp.certFile,
			"subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	}
	kp.certPEM, kp.keyPEM, kp.cert = certPEM, keyPEM, &cert
	return kp.cert, nil
}

func (kp *keyPair) fallback(err error) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	return kp.cert, err
}

// current is the handshake-path accessor: it never fails while a good
// certificate was loaded once; reload problems are logged.
func (kp *keyPair) current() (*tls.Certificate, error) {
	cert, err := kp.load()
	if err != nil {
		if cert == nil {
			return nil, err
		}
		if kp.logger != nil {
			kp.logger.Warn("keeping previous TLS certificate", "err", err)
		}
	}
	return cert, nil
}

// ParseKeyPair parses a PEM certificate chain and its PEM private key and
// checks that they belong together. Leaf is set.
func ParseKeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("parse leaf certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	return cert, nil
}

// ParseCertificates parses every CERTIFICATE block of a PEM bundle. It fails
// on an empty bundle, on any other block type, and on trailing non-PEM data
// that is not whitespace, so a truncated or mixed-up file is not half-used.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q in certificate bundle", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last PEM certificate")
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// caPool is a CA bundle read from a file, re-read when its bytes change.
type caPool struct {
	file   string
	logger *slog.Logger

	mu   sync.Mutex
	data []byte
	pool *x509.CertPool
}

func newCAPool(file string, logger *slog.Logger) (*caPool, error) {
	if file == "" {
		return nil, errors.New("CA file is required")
	}
	cp := &caPool{file: file, logger: logger}
	if _, err := cp.load(); err != nil {
		return nil, err
	}
	return cp, nil
}

func (cp *caPool) load() (*x509.CertPool, error) {
	data, err := os.ReadFile(cp.file)
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if err != nil {
		return cp.pool, fmt.Errorf("read CA bundle %s: %w", cp.file, err)
	}
	if cp.pool != nil && bytes.Equal(data, cp.data) {
		return cp.pool, nil
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return cp.pool, fmt.Errorf("load CA bundle %s: %w", cp.file, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	if cp.pool != nil && cp.logger != nil {
		cp.logger.Info("reloaded TLS CA bundle", "file", cp.file, "certificates", len(certs))
	}
	cp.data, cp.pool = data, pool
	return pool, nil
}

func (cp *caPool) current() (*x509.CertPool, error) {
	pool, err := cp.load()
	if err != nil {
		if pool == nil {
			return nil, err
		}
		if cp.logger != nil {
			cp.logger.Warn("keeping previous TLS CA bundle", "err", err)
		}
	}
	return pool, nil
}
