package kube

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// Build runs e2e/k8s/build.sh and returns the directory holding
// kube-apiserver, kubeadm and etcd (cached; seconds when warm).
func Build() (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("bash", filepath.Join(root, "e2e", "k8s", "build.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("e2e/k8s/build.sh: %w", err)
	}
	dir := strings.TrimSpace(string(out))
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("e2e/k8s/build.sh printed %q without %s: %w", dir, b, err)
		}
	}
	return dir, nil
}

// Etcd is one etcd member on loopback, plaintext (test data only).
type Etcd struct {
	URL  string
	Proc *harness.Proc
}

// StartEtcd starts etcd and waits for /health.
func StartEtcd(t testing.TB, binDir, logDir string) *Etcd {
	t.Helper()
	client := "http://" + harness.Addr(harness.FreePort(t))
	peer := "http://" + harness.Addr(harness.FreePort(t))
	data := filepath.Join(t.TempDir(), "etcd")
	p := harness.Start(t, logDir, "etcd", filepath.Join(binDir, "etcd"),
		"--name", "e2e", "--data-dir", data,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "e2e="+peer, "--unsafe-no-fsync", "--log-level", "warn")
	if err := p.WaitHTTP(client+"/health", 60*time.Second); err != nil {
		t.Fatalf("etcd: %v", err)
	}
	return &Etcd{URL: client, Proc: p}
}

// Audit policies.
const (
	// PolicyRequest logs TokenRequests with their body and the rest as metadata.
	PolicyRequest = `apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Request
  resources:
  - group: ""
    resources: ["serviceaccounts/token"]
- level: Metadata
`
	// PolicyRequestResponse logs TokenRequests with the minted token: what
	// tokenwatch must never let out.
	PolicyRequestResponse = `apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: RequestResponse
  resources:
  - group: ""
    resources: ["serviceaccounts/token"]
- level: Metadata
`
)

// Options configures one apiserver.
type Options struct {
	Name      string // cluster name; also the etcd prefix (unless Twin)
	Policy    string // audit policy YAML (default PolicyRequest)
	MaxSizeMB int    // --audit-log-maxsize (default 1)
	MaxBackup int    // --audit-log-maxbackup (default 1000)
	Compress  bool   // --audit-log-compress
	// Owner, when set, owns the apiserver process (for starts from subtests).
	Owner testing.TB
	// Twin, when set, makes this apiserver serve Twin's data under its own
	// name: Twin's etcd prefix (the same objects and UIDs) and Twin's
	// service-account signing key, issuer and API audiences, so tokens
	// minted by either are accepted by both. Its audit log, CA and port are
	// its own.
	Twin *Cluster
}

// Cluster is one kube-apiserver with its audit log.
type Cluster struct {
	Name     string
	AuditLog string
	Host     string // https://127.0.0.1:port
	CA       *CA
	Proc     *harness.Proc
	Admin    *Client
	dir      string

	etcdPrefix   string
	saPub, saKey string // service-account verification and signing key files
}

// StartCluster starts a kube-apiserver on 127.0.0.1 backed by etcd, with
// the audit log in its own directory, Node,RBAC authorization and
// NodeRestriction, and waits until /readyz answers.
func StartCluster(t testing.TB, binDir, logDir string, etcd *Etcd, o Options) *Cluster {
	t.Helper()
	if o.Policy == "" {
		o.Policy = PolicyRequest
	}
	if o.MaxSizeMB == 0 {
		o.MaxSizeMB = 1
	}
	if o.MaxBackup == 0 {
		o.MaxBackup = 1000
	}
	owner := o.Owner
	if owner == nil {
		owner = t
	}
	dir := owner.TempDir()
	ca, err := NewCA("e2e-" + o.Name)
	must(t, err)
	caFile := filepath.Join(dir, "ca.crt")
	must(t, os.WriteFile(caFile, ca.CertPEM, 0o644))
	serving, err := ca.Issue("kube-apiserver", nil, "127.0.0.1", "localhost")
	must(t, err)
	certFile, keyFile, err := serving.Write(dir, "apiserver")
	must(t, err)
	prefix := "/" + o.Name
	var saPub, saKey string
	if o.Twin != nil {
		prefix, saPub, saKey = o.Twin.etcdPrefix, o.Twin.saPub, o.Twin.saKey
	} else {
		saPub, saKey, err = writeRSAKey(dir)
		must(t, err)
	}
	policy := filepath.Join(dir, "audit-policy.yaml")
	must(t, os.WriteFile(policy, []byte(o.Policy), 0o644))
	auditDir := filepath.Join(dir, "audit")
	must(t, os.MkdirAll(auditDir, 0o700))
	port := harness.FreePort(t)

	args := []string{
		"--etcd-servers", etcd.URL, "--etcd-prefix", prefix,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(port),
		"--tls-cert-file", certFile, "--tls-private-key-file", keyFile, "--client-ca-file", caFile,
		"--cert-dir", filepath.Join(dir, "certs"),
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", saPub,
		"--service-account-signing-key-file", saKey, "--api-audiences", "https://kubernetes.default.svc",
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--audit-policy-file", policy, "--audit-log-path", filepath.Join(auditDir, "audit.log"),
		"--audit-log-maxsize", strconv.Itoa(o.MaxSizeMB), "--audit-log-maxbackup", strconv.Itoa(o.MaxBackup),
		"--audit-log-maxage", "1", "--audit-log-compress=" + strconv.FormatBool(o.Compress),
		"--endpoint-reconciler-type", "none", "--enable-priority-and-fairness=false",
		"--v", "1",
	}
	p := harness.StartOwned(t, owner, logDir, "kube-apiserver-"+o.Name, filepath.Join(binDir, "kube-apiserver"), args...)
	c := &Cluster{Name: o.Name, AuditLog: filepath.Join(auditDir, "audit.log"), Host: "https://" + harness.Addr(port),
		CA: ca, Proc: p, dir: dir, etcdPrefix: prefix, saPub: saPub, saKey: saKey}
	c.Admin = c.CertClient(t, "admin-"+o.Name, "system:masters")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var last error
	for {
		_, last = c.Admin.CS.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if last == nil {
			break
		}
		select {
		case <-p.Done():
			t.Fatalf("kube-apiserver %s exited before ready: %v", o.Name, last)
		case <-ctx.Done():
			t.Fatalf("kube-apiserver %s not ready within 90s: %v", o.Name, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return c
}

// Client is one identity talking to a cluster.
type Client struct {
	Name string
	CS   *kubernetes.Clientset
}

type auditIDKey struct{}

// auditIDRecorder stores the Audit-Id response header into the *string that
// the request's context carries, if any.
type auditIDRecorder struct{ next http.RoundTripper }

func (r auditIDRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if p, ok := req.Context().Value(auditIDKey{}).(*string); ok && resp != nil {
		*p = resp.Header.Get("Audit-Id")
	}
	return resp, err
}

func (c *Cluster) newClient(t testing.TB, name string, cfg *rest.Config) *Client {
	t.Helper()
	cl := &Client{Name: name}
	cfg.Host = c.Host
	cfg.TLSClientConfig.CAData = c.CA.CertPEM
	cfg.QPS, cfg.Burst = 1000, 2000
	cfg.UserAgent = "tokenwatch-e2e/" + name
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return auditIDRecorder{rt} }
	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	cl.CS = cs
	return cl
}

// CertClient authenticates with a client certificate for user in groups.
func (c *Cluster) CertClient(t testing.TB, user string, groups ...string) *Client {
	t.Helper()
	kp, err := c.CA.Issue(user, groups)
	must(t, err)
	return c.newClient(t, user, &rest.Config{TLSClientConfig: rest.TLSClientConfig{CertData: kp.CertPEM, KeyData: kp.KeyPEM}})
}

// Impersonating authenticates as user and impersonates as.
func (c *Cluster) Impersonating(t testing.TB, user, as string) *Client {
	t.Helper()
	kp, err := c.CA.Issue(user, nil)
	must(t, err)
	return c.newClient(t, user+"-as-"+as, &rest.Config{
		TLSClientConfig: rest.TLSClientConfig{CertData: kp.CertPEM, KeyData: kp.KeyPEM},
		Impersonate:     rest.ImpersonationConfig{UserName: as},
	})
}

// TokenClient authenticates with a bearer token.
func (c *Cluster) TokenClient(t testing.TB, name, token string) *Client {
	t.Helper()
	return c.newClient(t, name, &rest.Config{BearerToken: token})
}

// TokenClientFrom authenticates with a bearer token and connects from the
// local address ip (any 127.0.0.0/8 address is loopback on Linux), so the
// apiserver logs ip as the request's source.
func (c *Cluster) TokenClientFrom(t testing.TB, name, token, ip string) *Client {
	t.Helper()
	local := net.ParseIP(ip)
	if local == nil {
		t.Fatalf("TokenClientFrom %s: %q is not an IP address", name, ip)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: 10 * time.Second}
	return c.newClient(t, name, &rest.Config{BearerToken: token, Dial: d.DialContext})
}

// WithAuditID returns ctx for a request whose Audit-Id response header is
// to be stored into *id.
func WithAuditID(ctx context.Context, id *string) context.Context {
	return context.WithValue(ctx, auditIDKey{}, id)
}

// Mint is one TokenRequest as the client saw it.
type Mint struct {
	Client    string
	AuditID   string
	Namespace string
	Name      string
	Token     string // the minted token ("" when denied)
	Err       error
	DryRun    bool
}

// Outcome is the contract's event.outcome for the request.
func (m Mint) Outcome() string {
	if m.Err != nil {
		return "failure"
	}
	return "success"
}

// MintToken creates a TokenRequest for ns/sa.
func (cl *Client) MintToken(ctx context.Context, ns, sa string, dryRun bool) Mint {
	return cl.mint(ctx, ns, sa, dryRun, nil)
}

// MintTokenExpiring creates a TokenRequest for ns/sa asking for a lifetime of
// seconds (spec.expirationSeconds, logged with the request body).
func (cl *Client) MintTokenExpiring(ctx context.Context, ns, sa string, seconds int64) Mint {
	return cl.mint(ctx, ns, sa, false, &seconds)
}

// MintTokenDryRunExpiring is MintTokenExpiring with ?dryRun=All: the
// apiserver still signs a working token.
func (cl *Client) MintTokenDryRunExpiring(ctx context.Context, ns, sa string, seconds int64) Mint {
	return cl.mint(ctx, ns, sa, true, &seconds)
}

func (cl *Client) mint(ctx context.Context, ns, sa string, dryRun bool, seconds *int64) Mint {
	var auditID string
	ctx = WithAuditID(ctx, &auditID)
	opts := metav1.CreateOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	tr, err := cl.CS.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"https://kubernetes.default.svc"}, ExpirationSeconds: seconds},
	}, opts)
	m := Mint{Client: cl.Name, AuditID: auditID, Namespace: ns, Name: sa, Err: err, DryRun: dryRun}
	if err == nil {
		m.Token = tr.Status.Token
	}
	return m
}

// Setup creates namespaces, service accounts and RBAC for the scenarios:
//   - namespaces team-a, team-b; service accounts team-a/app, team-a/builder,
//     team-b/app, kube-system/minter
//   - user alice may create tokens in team-a; bob may not
//   - user carol may impersonate users
//   - team-a/builder may create tokens in team-a; kube-system/minter in kube-system
func (c *Cluster) Setup(ctx context.Context) error {
	cs := c.Admin.CS
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s in %s: %w", what, c.Name, err)
		}
		return nil
	}
	for _, ns := range []string{"team-a", "team-b"} {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err := create("namespace "+ns, err); err != nil {
			return err
		}
	}
	for _, sa := range [][2]string{{"team-a", "app"}, {"team-a", "builder"}, {"team-b", "app"}, {"kube-system", "minter"}} {
		_, err := cs.CoreV1().ServiceAccounts(sa[0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa[1]}}, metav1.CreateOptions{})
		if err := create("serviceaccount "+sa[0]+"/"+sa[1], err); err != nil {
			return err
		}
	}
	mintRule := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}}}
	roles := []struct {
		ns, name string
		subject  rbacv1.Subject
	}{
		{"team-a", "alice-mint", rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"}},
		{"team-a", "builder-mint", rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: "team-a", Name: "builder"}},
		{"kube-system", "minter-mint", rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: "kube-system", Name: "minter"}},
		{"team-a", "mallory-mint", rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "mallory"}},
	}
	for _, r := range roles {
		_, err := cs.RbacV1().Roles(r.ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: r.name}, Rules: mintRule}, metav1.CreateOptions{})
		if err := create("role "+r.name, err); err != nil {
			return err
		}
		_, err = cs.RbacV1().RoleBindings(r.ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: r.name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.name},
			Subjects:   []rbacv1.Subject{r.subject},
		}, metav1.CreateOptions{})
		if err := create("rolebinding "+r.name, err); err != nil {
			return err
		}
	}
	_, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-impersonator"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"users"}, Verbs: []string{"impersonate"}}},
	}, metav1.CreateOptions{})
	if err := create("clusterrole e2e-impersonator", err); err != nil {
		return err
	}
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-impersonator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "e2e-impersonator"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "carol"}},
	}, metav1.CreateOptions{})
	return create("clusterrolebinding e2e-impersonator", err)
}

// Load issues n cheap requests with a long label selector (about 3 KB of
// requestURI per audit event) from workers goroutines, to grow and rotate
// the audit log. It returns when done or ctx ends.
func (cl *Client) Load(ctx context.Context, n, workers int) error {
	sel := "e2e-load notin (" + strings.Repeat("x", 60)
	for i := 0; i < 40; i++ {
		sel += fmt.Sprintf(",v%02d%s", i, strings.Repeat("y", 60))
	}
	sel += ")"
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	per := n / workers
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if ctx.Err() != nil {
					return
				}
				_, err := cl.CS.CoreV1().ConfigMaps("team-b").List(ctx, metav1.ListOptions{LabelSelector: sel, Limit: 1})
				if err != nil && ctx.Err() == nil {
					errs <- fmt.Errorf("load request: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// AuditFiles lists the audit log and its rotated siblings.
func (c *Cluster) AuditFiles() []string {
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(c.AuditLog), "audit*"))
	return m
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
