package check

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// k8sBinaries returns the directory holding kube-apiserver, etcd and kubeadm,
// built from the Go module proxy by the e2e suite's wrapper module
// (e2e/k8s/build.sh; cached, about 4 minutes cold). -short skips.
func k8sBinaries(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIP (visible): -short: building kube-apiserver, etcd and kubeadm takes minutes cold")
	}
	return runScript(t, 30*time.Minute, nil, filepath.Join(repoRoot(t), "e2e", "k8s", "build.sh"))
}

// process is a child process stopped (SIGTERM, then SIGKILL) at cleanup.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan error
	log    string
}

func startProcess(t *testing.T, dir, name string, argv ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, exited: make(chan error, 1), log: logPath}
	go func() {
		p.exited <- cmd.Wait()
		f.Close()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, lastLines(string(out), 30))
		}
	})
	return p
}

// waitFor polls ready (an external process has no other signal) until it
// returns nil, the process exits, or the deadline passes.
func waitFor(t *testing.T, p *process, what string, timeout time.Duration, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = ready(); err == nil {
			return
		}
		select {
		case e := <-p.exited:
			p.exited <- e
			t.Fatalf("%s exited while waiting for %s: %v", p.name, what, e)
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("%s: not ready after %s: %v", what, timeout, err)
}

// pki is a throwaway CA with the certificates a loopback apiserver needs.
type pki struct {
	dir                   string
	ca                    *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	caFile                string
	serverCert, serverKey string
	adminCert, adminKey   string
	saKey, saPub          string
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeKey(t *testing.T, path string, k *ecdsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der)
}

var serial int64 = 1

// issue signs a leaf certificate with the CA and writes it and its key.
func (p *pki) issue(t *testing.T, name string, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	k := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writeKey(t, keyFile, k)
	return certFile, keyFile
}

func newPKI(t *testing.T, dir string) *pki {
	t.Helper()
	p := &pki{dir: dir, caKey: newKey(t)}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenwatch-check-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.caFile = filepath.Join(dir, "ca.crt")
	writePEM(t, p.caFile, "CERTIFICATE", der)
	p.serverCert, p.serverKey = p.issue(t, "apiserver", &x509.Certificate{
		Subject: pkix.Name{CommonName: "kube-apiserver"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	})
	p.adminCert, p.adminKey = p.issue(t, "admin", &x509.Certificate{
		Subject: pkix.Name{CommonName: "tokenwatch-check", Organization: []string{"system:masters"}}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	sa := newKey(t)
	p.saKey, p.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	writeKey(t, p.saKey, sa)
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.saPub, "PUBLIC KEY", pub)
	return p
}

// apiServer is a kube-apiserver with its etcd on loopback and an admin client.
type apiServer struct {
	url      string
	client   *http.Client
	auditLog string
	// kubeconfig is a kubeconfig file for the admin client, for tools.
	kubeconfig string
}

func loopbackPort(t *testing.T) string {
	_, port, _ := net.SplitHostPort(freeAddr(t))
	return port
}

// startAPIServer starts etcd and kube-apiserver on loopback. extra are more
// kube-apiserver flags (--name=value).
func startAPIServer(t *testing.T, bins string, extra ...string) *apiServer {
	t.Helper()
	dir := t.TempDir()
	p := newPKI(t, dir)

	client, peer := loopbackPort(t), loopbackPort(t)
	etcdProbe := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	etcd := startProcess(t, dir, "etcd", filepath.Join(bins, "etcd"),
		"--name=check", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:"+client, "--advertise-client-urls=http://127.0.0.1:"+client,
		"--listen-peer-urls=http://127.0.0.1:"+peer, "--initial-advertise-peer-urls=http://127.0.0.1:"+peer,
		"--initial-cluster=check=http://127.0.0.1:"+peer, "--unsafe-no-fsync", "--log-level=warn")
	waitFor(t, etcd, "etcd /health", time.Minute, func() error {
		resp, err := etcdProbe.Get("http://127.0.0.1:" + client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd /health: %s", resp.Status)
		}
		return nil
	})

	secure := loopbackPort(t)
	args := []string{filepath.Join(bins, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:" + client,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + secure,
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + p.serverCert, "--tls-private-key-file=" + p.serverKey,
		"--client-ca-file=" + p.caFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub, "--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--enable-priority-and-fairness=false",
	}
	args = append(args, extra...)
	apiserver := startProcess(t, dir, "kube-apiserver", args...)

	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	cert, err := tls.LoadX509KeyPair(p.adminCert, p.adminKey)
	if err != nil {
		t.Fatal(err)
	}
	s := &apiServer{
		url: "https://127.0.0.1:" + secure,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
		}},
	}
	t.Cleanup(s.client.CloseIdleConnections)
	s.kubeconfig = filepath.Join(dir, "kubeconfig")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: check, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: admin, user: {client-certificate: %q, client-key: %q}}]
contexts: [{name: check, context: {cluster: check, user: admin}}]
current-context: check
`, s.url, p.caFile, p.adminCert, p.adminKey)
	if err := os.WriteFile(s.kubeconfig, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, apiserver, "kube-apiserver /readyz", 2*time.Minute, func() error {
		_, err := s.do(http.MethodGet, "/readyz", "", nil, http.StatusOK)
		return err
	})
	return s
}

// response is an API response: its body and Warning headers.
type response struct {
	body     []byte
	warnings []string
	header   http.Header
}

// do sends a request and fails unless the status is one of want.
func (s *apiServer) do(method, path, contentType string, body []byte, want ...int) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	r := response{body: data, warnings: resp.Header.Values("Warning"), header: resp.Header}
	for _, w := range want {
		if resp.StatusCode == w {
			return r, nil
		}
	}
	return r, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
}

// resourceInfo is what discovery says about a kind.
type resourceInfo struct {
	plural     string
	namespaced bool
}

// discover maps apiVersion/kind to its REST resource, from the server's
// discovery documents.
func (s *apiServer) discover(apiVersion, kind string) (resourceInfo, error) {
	path := "/apis/" + apiVersion
	if apiVersion == "v1" {
		path = "/api/v1"
	}
	r, err := s.do(http.MethodGet, path, "", nil, http.StatusOK)
	if err != nil {
		return resourceInfo{}, err
	}
	var list struct {
		Resources []struct {
			Name       string `json:"name"`
			Kind       string `json:"kind"`
			Namespaced bool   `json:"namespaced"`
		} `json:"resources"`
	}
	if err := json.Unmarshal(r.body, &list); err != nil {
		return resourceInfo{}, fmt.Errorf("discovery %s: %w", path, err)
	}
	for _, res := range list.Resources {
		if res.Kind == kind && !strings.Contains(res.Name, "/") {
			return resourceInfo{plural: res.Name, namespaced: res.Namespaced}, nil
		}
	}
	return resourceInfo{}, fmt.Errorf("discovery %s: no resource of kind %s", path, kind)
}

// objectPath is the REST path of an object.
func objectPath(apiVersion, namespace string, info resourceInfo, name string) string {
	p := "/apis/" + apiVersion
	if apiVersion == "v1" {
		p = "/api/v1"
	}
	if info.namespaced {
		p += "/namespaces/" + namespace
	}
	return p + "/" + info.plural + "/" + name
}

// apply server-side-applies an object (as `kubectl apply --server-side`), with
// strict field validation; dryRun leaves nothing behind.
func (s *apiServer) apply(o object, dryRun bool) (response, error) {
	info, err := s.discover(o.apiVersion(), o.kind())
	if err != nil {
		return response{}, err
	}
	body, err := json.Marshal(o)
	if err != nil {
		return response{}, err
	}
	q := "?fieldManager=tokenwatch-check&fieldValidation=Strict&force=true"
	if dryRun {
		q += "&dryRun=All"
	}
	return s.do(http.MethodPatch, objectPath(o.apiVersion(), o.namespace(), info, o.name())+q,
		"application/apply-patch+yaml", body, http.StatusOK, http.StatusCreated)
}
