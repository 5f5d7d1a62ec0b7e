// Package devca issues a throw-away certificate authority and the server and
// agent certificates tokenwatch's mutual TLS needs, for local runs and tests
// (cmd/devcerts writes them to files; tests issue them in-process). Keys are
// ECDSA P-256. It is not meant for production PKI: use cert-manager or your
// own CA there.
package devca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Validity defaults: long enough for a development setup, short enough not
// to become a forgotten credential.
const (
	CAValidity   = 365 * 24 * time.Hour
	LeafValidity = 90 * 24 * time.Hour
	// clockSkew backdates NotBefore so a peer with a slightly slow clock
	// accepts a fresh certificate.
	clockSkew = 5 * time.Minute
)

// CA is a self-signed certificate authority held in memory.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	// chainPEM holds the CA certificates between what this CA issues and
	// the root: empty for a root, this CA's and its parents' for an
	// intermediate.
	chainPEM []byte
}

// New creates a self-signed CA named commonName, valid for CAValidity. It
// may sign one level of intermediates (see Intermediate).
func New(commonName string) (*CA, error) {
	key, serial, err := newKey("CA")
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"tokenwatch development"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	cert, der, err := createCA("CA certificate", tmpl, tmpl, key, key)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, certPEM: pemCert(der)}, nil
}

// newKey generates a P-256 key and a serial number for the certificate
// what names.
func newKey(what string) (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %s: %w", what, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	return key, serial, nil
}

// createCA signs tmpl, a CA certificate for key, with parent and its key,
// and parses the result.
func createCA(what string, tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) (*x509.Certificate, []byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", what, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", what, err)
	}
	return cert, der, nil
}

// CertPEM returns the CA certificate in PEM form (the ca.crt file).
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Certificate returns the parsed CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Intermediate issues a CA for the agents of one cluster only, signed by
// ca, as a fleet's hub issues one to each spoke: its certificate carries the
// URI SAN spiffe://<trustDomain>/cluster/<cluster>, which the aggregator
// (tlsconf.CheckIssuers) holds every certificate it signs to, and the
// client-auth extended key usage only, so that no server certificate it signs
// verifies. What it issues carries it in the chain (Pair.CertPEM: the leaf,
// then the intermediate), as cert-manager's CA issuer writes tls.crt.
func (ca *CA) Intermediate(trustDomain, cluster string) (*CA, error) {
	id, err := url.Parse("spiffe://" + trustDomain + "/cluster/" + cluster)
	if err != nil {
		return nil, fmt.Errorf("intermediate SPIFFE ID for cluster %q: %w", cluster, err)
	}
	key, serial, err := newKey("intermediate " + cluster)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tokenwatch agents CA " + cluster, Organization: []string{"tokenwatch development"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ca.cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{id},
	}
	cert, der, err := createCA(fmt.Sprintf("intermediate certificate for %q", cluster), tmpl, ca.cert, key, ca.key)
	if err != nil {
		return nil, err
	}
	certPEM := pemCert(der)
	return &CA{cert: cert, key: key, certPEM: certPEM, chainPEM: append(append([]byte(nil), certPEM...), ca.chainPEM...)}, nil
}

// Pair is an issued certificate and its private key, PEM encoded.
type Pair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// Leaf describes a certificate to issue.
type Leaf struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	URIs       []*url.URL
	// ExtKeyUsage defaults to both server and client auth when empty.
	ExtKeyUsage []x509.ExtKeyUsage
	// NotBefore and NotAfter default to now-5m and now+LeafValidity.
	NotBefore, NotAfter time.Time
}

// Issue signs a leaf certificate for a fresh P-256 key. An intermediate's
// CertPEM is followed by the intermediate's chain.
func (ca *CA) Issue(l Leaf) (Pair, error) {
	key, serial, err := newKey(strconv.Quote(l.CommonName))
	if err != nil {
		return Pair{}, err
	}
	now := time.Now()
	if l.NotBefore.IsZero() {
		l.NotBefore = now.Add(-clockSkew)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = now.Add(LeafValidity)
	}
	if l.NotAfter.After(ca.cert.NotAfter) {
		l.NotAfter = ca.cert.NotAfter
	}
	if len(l.ExtKeyUsage) == 0 {
		l.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: l.CommonName, Organization: []string{"tokenwatch development"}},
		NotBefore:             l.NotBefore,
		NotAfter:              l.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           l.ExtKeyUsage,
		BasicConstraintsValid: true,
		DNSNames:              l.DNSNames,
		IPAddresses:           l.IPs,
		URIs:                  l.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("create certificate %q: %w", l.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("marshal key for %q: %w", l.CommonName, err)
	}
	return Pair{
		CertPEM: append(pemCert(der), ca.chainPEM...),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Server issues the aggregator's certificate. Each host is an IP address or
// a DNS name; it becomes the matching SAN. The certificate is for server
// auth only.
func (ca *CA) Server(hosts ...string) (Pair, error) {
	if len(hosts) == 0 {
		return Pair{}, errors.New("server certificate needs at least one host")
	}
	l := Leaf{CommonName: hosts[0], ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			l.IPs = append(l.IPs, ip)
		} else {
			l.DNSNames = append(l.DNSNames, h)
		}
	}
	return ca.Issue(l)
}

// Agent issues an agent's client certificate bound to cluster by the URI
// SAN spiffe://<trustDomain>/cluster/<cluster>. The certificate is for
// client auth only.
func (ca *CA) Agent(trustDomain, cluster string) (Pair, error) {
	id, err := url.Parse("spiffe://" + trustDomain + "/cluster/" + cluster)
	if err != nil {
		return Pair{}, fmt.Errorf("agent SPIFFE ID for cluster %q: %w", cluster, err)
	}
	return ca.Issue(Leaf{
		CommonName:  "tokenwatch-agent " + cluster,
		URIs:        []*url.URL{id},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// Write stores the pair as dir/name.crt (mode 0644) and dir/name.key (mode
// 0600). Each file is written to a temporary name and renamed into place,
// so a reader never sees half a file.
func (p Pair) Write(dir, name string) error {
	if err := WriteFile(filepath.Join(dir, name+".key"), p.KeyPEM, 0o600); err != nil {
		return err
	}
	return WriteFile(filepath.Join(dir, name+".crt"), p.CertPEM, 0o644)
}

// WriteFile writes data to path atomically (temporary file, then rename)
// with the given mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Set is what WriteSet issues.
type Set struct {
	TrustDomain string   // default "tokenwatch"
	Clusters    []string // one agent certificate each
	Hosts       []string // server SANs; default localhost, 127.0.0.1, ::1
}

// Files names the files WriteSet writes into a directory.
type Files struct {
	CA         string            // ca.crt
	ServerCert string            // server.crt
	ServerKey  string            // server.key
	AgentCert  map[string]string // cluster -> agent-<cluster>.crt
	AgentKey   map[string]string // cluster -> agent-<cluster>.key
}

// WriteSet issues a new CA, a server certificate and one agent certificate
// per cluster, and writes ca.crt, server.crt/.key and
// agent-<cluster>.crt/.key into dir (created with mode 0700 if missing).
// It returns the CA so callers can issue more.
func WriteSet(dir string, s Set) (*CA, Files, error) {
	if s.TrustDomain == "" {
		s.TrustDomain = "tokenwatch"
	}
	if len(s.Hosts) == 0 {
		s.Hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, Files{}, fmt.Errorf("create certificate directory: %w", err)
	}
	ca, err := New("tokenwatch development CA")
	if err != nil {
		return nil, Files{}, err
	}
	files := Files{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"),
		ServerKey:  filepath.Join(dir, "server.key"),
		AgentCert:  map[string]string{},
		AgentKey:   map[string]string{},
	}
	if err := WriteFile(files.CA, ca.CertPEM(), 0o644); err != nil {
		return nil, Files{}, err
	}
	srv, err := ca.Server(s.Hosts...)
	if err != nil {
		return nil, Files{}, err
	}
	if err := srv.Write(dir, "server"); err != nil {
		return nil, Files{}, err
	}
	for _, c := range s.Clusters {
		p, err := ca.Agent(s.TrustDomain, c)
		if err != nil {
			return nil, Files{}, err
		}
		if err := p.Write(dir, "agent-"+c); err != nil {
			return nil, Files{}, err
		}
		files.AgentCert[c] = filepath.Join(dir, "agent-"+c+".crt")
		files.AgentKey[c] = filepath.Join(dir, "agent-"+c+".key")
	}
	return ca, files, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return s, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
