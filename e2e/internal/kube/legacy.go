package kube

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// legacyIssuer is the issuer of Secret-based service-account tokens
// (kubernetes pkg/serviceaccount/legacy.go, LegacyIssuer).
const legacyIssuer = "kubernetes/serviceaccount"

// CreateLegacyToken does what the token controller of kube-controller-manager
// would (none runs in these tests): it signs a legacy service-account JWT for
// ns/sa with the cluster's service-account key and stores it in a new Secret
// secretName of type kubernetes.io/service-account-token. kube-apiserver
// accepts such a token while the Secret holds it and the service account's
// UID matches, and annotates each request made with it with
// authentication.k8s.io/legacy-token. It returns the token.
func (c *Cluster) CreateLegacyToken(ctx context.Context, ns, sa, secretName string) (string, error) {
	cs := c.Admin.CS
	acct, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get serviceaccount %s/%s: %w", ns, sa, err)
	}
	tok, err := c.signLegacy(ns, sa, string(acct.UID), secretName)
	if err != nil {
		return "", err
	}
	_, err = cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Annotations: map[string]string{
			corev1.ServiceAccountNameKey: sa,
			corev1.ServiceAccountUIDKey:  string(acct.UID),
		}},
		Type: corev1.SecretTypeServiceAccountToken,
		Data: map[string][]byte{corev1.ServiceAccountTokenKey: []byte(tok)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create secret %s/%s: %w", ns, secretName, err)
	}
	return tok, nil
}

// signLegacy returns an RS256 JWT with the legacy claims (kubernetes
// pkg/serviceaccount/legacy.go, LegacyClaims): no audience, no expiry.
func (c *Cluster) signLegacy(ns, sa, uid, secretName string) (string, error) {
	key, err := readRSAKey(c.saKey)
	if err != nil {
		return "", err
	}
	header, err := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT"})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]string{
		"iss":                                    legacyIssuer,
		"sub":                                    "system:serviceaccount:" + ns + ":" + sa,
		"kubernetes.io/serviceaccount/namespace": ns,
		"kubernetes.io/serviceaccount/secret.name":          secretName,
		"kubernetes.io/serviceaccount/service-account.name": sa,
		"kubernetes.io/serviceaccount/service-account.uid":  uid,
	})
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("sign legacy token: %w", err)
	}
	return signing + "." + enc.EncodeToString(sig), nil
}

func readRSAKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read service-account key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("service-account key: no PEM block")
	}
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse service-account key: %w", err)
	}
	return key, nil
}
