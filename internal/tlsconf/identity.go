package tlsconf

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// DefaultTrustDomain is the SPIFFE trust domain of agent certificates unless
// the aggregator's --trust-domain says otherwise.
const DefaultTrustDomain = "tokenwatch"

// Reasons a peer's cluster identity is refused. ClusterFromContext and
// ClusterFromCert wrap exactly one of them; Reason maps them to a metric
// label.
var (
	ErrNoPeerCertificate  = errors.New("no verified TLS client certificate")
	ErrNoClusterID        = errors.New("certificate has no spiffe://<trust-domain>/cluster/<name> URI SAN")
	ErrForeignTrustDomain = errors.New("certificate SPIFFE ID is in a foreign trust domain")
	ErrSeveralIDs         = errors.New("certificate has several SPIFFE IDs")
	ErrMalformedID        = errors.New("certificate SPIFFE ID is malformed")
	ErrClusterMismatch    = errors.New("claimed cluster differs from the certificate's")
	ErrIssuerCluster      = errors.New("certificate issued by a CA bound to another cluster")
)

// Reason returns a short, stable label for an identity error, for metrics:
// no_certificate, no_cluster_id, foreign_trust_domain, several_ids,
// malformed_id, cluster_mismatch, issuer_cluster_mismatch, or "other".
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrNoPeerCertificate):
		return "no_certificate"
	case errors.Is(err, ErrNoClusterID):
		return "no_cluster_id"
	case errors.Is(err, ErrForeignTrustDomain):
		return "foreign_trust_domain"
	case errors.Is(err, ErrSeveralIDs):
		return "several_ids"
	case errors.Is(err, ErrMalformedID):
		return "malformed_id"
	case errors.Is(err, ErrClusterMismatch):
		return "cluster_mismatch"
	case errors.Is(err, ErrIssuerCluster):
		return "issuer_cluster_mismatch"
	default:
		return "other"
	}
}

// ClusterFromContext returns the cluster name bound to the verified peer
// certificate of a gRPC server stream or call: the URI SAN
// spiffe://<trustDomain>/cluster/<name>. It fails when the connection is not
// TLS with a verified client certificate, as ClusterFromCert does, and
// when a CA that vouched for the certificate is bound to another cluster
// (CheckIssuers).
func ClusterFromContext(ctx context.Context, trustDomain string) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ErrNoPeerCertificate
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return "", ErrNoPeerCertificate
	}
	cluster, err := ClusterFromCert(info.State.PeerCertificates[0], trustDomain)
	if err != nil {
		return "", err
	}
	if err := CheckIssuers(info.State.VerifiedChains, trustDomain, cluster); err != nil {
		return "", err
	}
	return cluster, nil
}

// CheckIssuers checks that the CAs that vouched for an agent certificate of
// cluster may sign for it. A CA certificate carrying the SPIFFE ID
// spiffe://<trustDomain>/cluster/<name> (a per-cluster intermediate: a
// fleet's spoke issuing its own agents' certificates) signs for that cluster
// only; one without a SPIFFE ID, or with the trust domain's own
// (spiffe://<trustDomain>), signs for any; any other SPIFFE ID (a foreign
// trust domain, another path, several IDs) binds a CA to none. X.509 name
// constraints cannot say this: crypto/x509 matches a URI constraint against
// the URI's host, which is the trust domain, never against its path.
//
// chains are the verified chains, leaf first, as crypto/tls returns them;
// the certificate passes when one of them has no CA bound elsewhere.
func CheckIssuers(chains [][]*x509.Certificate, trustDomain, cluster string) error {
	if len(chains) == 0 {
		return ErrNoPeerCertificate
	}
	var first error
	for _, chain := range chains {
		err := checkChain(chain, trustDomain, cluster)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func checkChain(chain []*x509.Certificate, trustDomain, cluster string) error {
	for _, ca := range chain[min(1, len(chain)):] {
		var ids []string
		for _, u := range ca.URIs {
			if strings.EqualFold(u.Scheme, "spiffe") {
				ids = append(ids, u.String())
			}
		}
		switch {
		case len(ids) == 0, len(ids) == 1 && ids[0] == "spiffe://"+trustDomain:
			continue // signs for the whole trust domain
		case len(ids) == 1:
			if c, err := ParseClusterID(ids[0], trustDomain); err == nil && c == cluster {
				continue
			}
		}
		return fmt.Errorf("%w: CA %q (%s) may not sign for cluster %q",
			ErrIssuerCluster, ca.Subject.CommonName, strings.Join(ids, ", "), cluster)
	}
	return nil
}

// spiffeIDs are cert's SPIFFE IDs among its URI SANs.
func spiffeIDs(cert *x509.Certificate) []*url.URL {
	var ids []*url.URL
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			ids = append(ids, u)
		}
	}
	return ids
}

// ClusterFromCert returns the cluster name of an agent certificate. The
// certificate must carry exactly one SPIFFE ID among its URI SANs (as an
// X.509-SVID does), in trustDomain, of the form /cluster/<name>; other URI
// schemes are ignored.
func ClusterFromCert(cert *x509.Certificate, trustDomain string) (string, error) {
	ids := spiffeIDs(cert)
	switch len(ids) {
	case 0:
		return "", ErrNoClusterID
	case 1:
	default:
		return "", fmt.Errorf("%w: %d URI SANs", ErrSeveralIDs, len(ids))
	}
	return ParseClusterID(ids[0].String(), trustDomain)
}

// ParseClusterID parses a SPIFFE ID of the form
// spiffe://<trustDomain>/cluster/<name> and returns <name>. The ID must
// follow the SPIFFE ID rules (lower-case scheme and trust domain of
// [a-z0-9.-_], path segments of [a-zA-Z0-9.-_] that are neither empty nor
// "." or "..", no port, user info, query or fragment).
func ParseClusterID(id, trustDomain string) (string, error) {
	td, segs, err := parseSPIFFEID(id)
	if err != nil {
		return "", err
	}
	if td != trustDomain {
		return "", fmt.Errorf("%w: %q, want %q", ErrForeignTrustDomain, td, trustDomain)
	}
	if len(segs) != 2 || segs[0] != "cluster" {
		return "", fmt.Errorf("%w: %q is not /cluster/<name>", ErrNoClusterID, id)
	}
	return segs[1], nil
}

// ClusterID returns the SPIFFE ID that binds cluster to trustDomain.
func ClusterID(trustDomain, cluster string) string {
	return "spiffe://" + trustDomain + "/cluster/" + cluster
}

// ValidateTrustDomain checks a trust domain name as SPIFFE defines it.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	for i := 0; i < len(td); i++ {
		if !isTrustDomainChar(td[i]) {
			return fmt.Errorf("trust domain %q: character %q not allowed (want a-z 0-9 . - _)", td, td[i])
		}
	}
	return nil
}

// ValidateClusterName checks that a cluster name can be carried in a
// SPIFFE ID path segment.
func ValidateClusterName(name string) error {
	if err := validateSegment(name); err != nil {
		return fmt.Errorf("cluster name %q: %w", name, err)
	}
	return nil
}

// VerifyClaim compares the cluster an agent claims (Hello.cluster) with the
// one bound to its certificate. It returns the certificate's cluster, or a
// gRPC status error: Unauthenticated when the peer has no usable
// certificate identity, PermissionDenied when it names another cluster.
// errors.Is still finds the Err* reason through the status error's cause
// via Reason on the returned error's wrapped value.
func VerifyClaim(ctx context.Context, trustDomain, claimed string) (string, error) {
	got, err := ClusterFromContext(ctx, trustDomain)
	if err != nil {
		return "", &claimError{code: codes.Unauthenticated, err: err}
	}
	if got != claimed {
		return got, &claimError{code: codes.PermissionDenied,
			err: fmt.Errorf("%w: hello names cluster %q, certificate binds %q", ErrClusterMismatch, claimed, got)}
	}
	return got, nil
}

// claimError is a gRPC status error that keeps its cause for errors.Is.
type claimError struct {
	code codes.Code
	err  error
}

func (e *claimError) Error() string              { return e.GRPCStatus().String() }
func (e *claimError) Unwrap() error              { return e.err }
func (e *claimError) GRPCStatus() *status.Status { return status.New(e.code, e.err.Error()) }

func parseSPIFFEID(id string) (trustDomain string, segments []string, err error) {
	const scheme = "spiffe://"
	if !strings.HasPrefix(id, scheme) {
		return "", nil, fmt.Errorf("%w: %q does not start with %s", ErrMalformedID, id, scheme)
	}
	rest := id[len(scheme):]
	td, path, _ := strings.Cut(rest, "/")
	if td == "" {
		return "", nil, fmt.Errorf("%w: %q has no trust domain", ErrMalformedID, id)
	}
	for i := 0; i < len(td); i++ {
		if !isTrustDomainChar(td[i]) {
			return "", nil, fmt.Errorf("%w: %q: trust domain character %q not allowed", ErrMalformedID, id, td[i])
		}
	}
	if path == "" {
		return td, nil, nil
	}
	segments = strings.Split(path, "/")
	for _, s := range segments {
		if err := validateSegment(s); err != nil {
			return "", nil, fmt.Errorf("%w: %q: %w", ErrMalformedID, id, err)
		}
	}
	return td, segments, nil
}

func validateSegment(s string) error {
	switch s {
	case "":
		return errors.New("empty path segment")
	case ".", "..":
		return errors.New("dot path segment")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("character %q not allowed (want a-z A-Z 0-9 . - _)", c)
		}
	}
	return nil
}

func isTrustDomainChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}
