package check

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// kubeadmConfig is the part of deploy/kubeadm/kubeadm-config.yaml we read.
type kubeadmConfig struct {
	APIServer struct {
		ExtraArgs []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"extraArgs"`
		ExtraVolumes []struct {
			Name      string `json:"name"`
			HostPath  string `json:"hostPath"`
			MountPath string `json:"mountPath"`
			ReadOnly  bool   `json:"readOnly"`
		} `json:"extraVolumes"`
	} `json:"apiServer"`
}

func readKubeadmConfig(t *testing.T) kubeadmConfig {
	t.Helper()
	data, err := os.ReadFile(deployPath(t, "kubeadm", "kubeadm-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c kubeadmConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("kubeadm-config.yaml: %v", err)
	}
	return c
}

func (c kubeadmConfig) arg(name string) string {
	for _, a := range c.APIServer.ExtraArgs {
		if a.Name == name {
			return a.Value
		}
	}
	return ""
}

// TestKubeadmAuditWiring checks that the kubeadm patch, the audit policy and
// the agent agree on paths: the policy file and the log directory are mounted
// into the kube-apiserver pod, the log is rotated and compressed, and the
// agent's read-only hostPath is that log directory.
func TestKubeadmAuditWiring(t *testing.T) {
	c := readKubeadmConfig(t)
	mounted := func(path string) (hostPath string, readOnly, ok bool) {
		for _, v := range c.APIServer.ExtraVolumes {
			if path == v.MountPath || strings.HasPrefix(path, v.MountPath+"/") {
				return filepath.Join(v.HostPath, strings.TrimPrefix(path, v.MountPath)), v.ReadOnly, true
			}
		}
		return "", false, false
	}
	policy := c.arg("audit-policy-file")
	if _, _, ok := mounted(policy); policy == "" || !ok {
		t.Errorf("audit-policy-file %q is not on an extraVolume", policy)
	}
	logPath := c.arg("audit-log-path")
	hostLog, readOnly, ok := mounted(logPath)
	if logPath == "" || !ok || readOnly {
		t.Errorf("audit-log-path %q is not on a writable extraVolume", logPath)
	}
	for _, name := range []string{"audit-log-maxsize", "audit-log-maxbackup", "audit-log-maxage"} {
		if v := c.arg(name); v == "" || v == "0" {
			t.Errorf("%s = %q: rotation must be on", name, v)
		}
	}
	if c.arg("audit-log-format") != "json" {
		t.Errorf("audit-log-format = %q, want json", c.arg("audit-log-format"))
	}
	for _, name := range overlays(t) {
		ds := find(kustomizeBuild(t, deployPath(t, "overlays", name)), "DaemonSet", "tokenwatch-agent")
		if ds == nil {
			continue
		}
		vols, _ := ds.path("spec", "template", "spec", "volumes").([]any)
		found := false
		for _, v := range vols {
			hp, _ := object(v.(map[string]any)).path("hostPath", "path").(string)
			if hp == filepath.Dir(hostLog) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: the agent mounts no hostPath %s (the kube-apiserver's audit log directory)", name, filepath.Dir(hostLog))
		}
	}
}

// TestControlPlane runs the real tools: kubeadm validates the kubeadm
// configuration; a kube-apiserver started with its audit flags and the audit
// policy accepts every overlay's objects, deploy/otelcol's, an overlay with
// components/prometheus and a spoke with components/prometheus-agent
// (server-side apply, dry run, strict field validation, cert-manager's and
// the prometheus-operator's CRDs installed) and logs a real
// TokenRequest at Request level without the token.
func TestControlPlane(t *testing.T) {
	bins := k8sBinaries(t)

	t.Run("kubeadm config validate", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(bins, "kubeadm"), "config", "validate", "--config", deployPath(t, "kubeadm", "kubeadm-config.yaml"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubeadm config validate: %v\n%s", err, out)
		}
		t.Logf("kubeadm config validate: %s", strings.TrimSpace(string(out)))
	})

	// The kube-apiserver gets the kubeadm patch's audit flags, with the
	// policy file from the repository and the log in a temporary directory.
	auditDir := t.TempDir()
	var extra []string
	for _, a := range readKubeadmConfig(t).APIServer.ExtraArgs {
		v := a.Value
		switch a.Name {
		case "audit-policy-file":
			v = deployPath(t, "kubeadm", "audit-policy.yaml")
		case "audit-log-path":
			v = filepath.Join(auditDir, filepath.Base(a.Value))
		}
		extra = append(extra, "--"+a.Name+"="+v)
	}
	s := startAPIServer(t, bins, extra...)
	auditLog := filepath.Join(auditDir, "audit.log")

	t.Run("cert-manager CRDs", func(t *testing.T) {
		installCertManagerCRDs(t, s)
	})
	t.Run("prometheus-operator CRDs", func(t *testing.T) {
		installPrometheusOperatorCRDs(t, s)
	})
	if t.Failed() {
		return
	}
	kits := []string{"otelcol", "check/testdata/prometheus", "check/testdata/prometheus-spoke", "check/testdata/audit-policy"}
	for _, name := range overlays(t) {
		kits = append(kits, "overlays/"+name)
	}
	for _, kit := range kits {
		t.Run(kit, func(t *testing.T) {
			dryRunObjects(t, s, kustomizeBuild(t, deployPath(t, filepath.FromSlash(kit))))
		})
	}

	t.Run("audit policy logs TokenRequest at Request", func(t *testing.T) {
		checkTokenRequestAudit(t, s, auditLog)
	})
}

// dryRunObjects server-side applies rendered objects on s: each Namespace for
// real (namespaced dry runs need it), the rest as a dry run with strict field
// validation. The aggregator's and the collector's Deployments must raise no
// Pod Security warning; the agent's DaemonSet only those its hostPath volumes
// and uid 0 cannot avoid.
func dryRunObjects(t *testing.T, s *apiServer, objs []object) {
	t.Helper()
	for _, o := range objs {
		if o.kind() == "Namespace" {
			if _, err := s.apply(o, false); err != nil {
				t.Fatalf("%s: %v", o, err)
			}
		}
	}
	for _, o := range objs {
		if o.kind() == "Namespace" {
			continue
		}
		r, err := s.apply(o, true)
		if err != nil {
			t.Errorf("%s: %v", o, err)
			continue
		}
		for _, w := range r.warnings {
			t.Logf("%s: warning: %s", o, w)
		}
		// The namespaces warn or enforce at the restricted Pod Security
		// level: the aggregator and the collector must meet it.
		if o.kind() == "Deployment" && len(r.warnings) > 0 {
			t.Errorf("%s: warnings from the server: %q", o, r.warnings)
		}
		if o.kind() == "DaemonSet" {
			for _, w := range r.warnings {
				for _, bad := range []string{"allowPrivilegeEscalation", "capabilities", "seccompProfile", "privileged"} {
					if strings.Contains(w, bad) {
						t.Errorf("%s: Pod Security flags %s: %s", o, bad, w)
					}
				}
			}
		}
	}
	t.Logf("%d objects accepted", len(objs))
}

// installCertManagerCRDs creates cert-manager's CustomResourceDefinitions, as
// shipped in its Go module (a dependency of this module), and waits until the
// server serves them.
func installCertManagerCRDs(t *testing.T, s *apiServer) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	if err != nil {
		t.Fatalf("locate the cert-manager module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds")
	files, err := filepath.Glob(filepath.Join(dir, "cert-manager.io_*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cert-manager CRDs in %s: %v", dir, err)
	}
	for _, f := range files {
		objs, err := readYAMLDocs(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if _, err := s.apply(o, false); err != nil {
				t.Fatalf("%s: %v", o, err)
			}
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := s.discover("cert-manager.io/v1", "Certificate")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cert-manager.io/v1 not served: %v", err)
		}
		time.Sleep(200 * time.Millisecond) // discovery has no watch to wait on
	}
}

// checkTokenRequestAudit mints a real token and reads the audit log the
// kube-apiserver wrote with the repository's policy and flags.
func checkTokenRequestAudit(t *testing.T, s *apiServer, auditLog string) {
	t.Helper()
	ns := object{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "audit-check"}}
	if _, err := s.apply(ns, false); err != nil {
		t.Fatal(err)
	}
	sa := object{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "minted", "namespace": "audit-check"}}
	if _, err := s.apply(sa, false); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["tokenwatch-check"],"expirationSeconds":600}}`)
	r, err := s.do(http.MethodPost, "/api/v1/namespaces/audit-check/serviceaccounts/minted/token", "application/json", body, http.StatusCreated)
	if err != nil {
		t.Fatal(err)
	}
	var tr struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	if err := json.Unmarshal(r.body, &tr); err != nil || tr.Status.Token == "" {
		t.Fatalf("TokenRequest response without a token: %v", err)
	}
	auditID := r.header.Get("Audit-Id")
	if auditID == "" {
		t.Fatal("no Audit-Id header")
	}

	// The ResponseComplete event is written as the request finishes, which
	// can be just after the response is sent: read until both stages are in.
	type event struct {
		Level         string          `json:"level"`
		Stage         string          `json:"stage"`
		AuditID       string          `json:"auditID"`
		RequestObject json.RawMessage `json:"requestObject"`
		Response      json.RawMessage `json:"responseObject"`
		ObjectRef     struct {
			Resource    string `json:"resource"`
			Subresource string `json:"subresource"`
		} `json:"objectRef"`
	}
	var stages map[string]event
	var data []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err = os.ReadFile(auditLog)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		stages = map[string]event{}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("audit log line: %v", err)
			}
			if e.AuditID == auditID {
				stages[e.Stage] = e
			}
		}
		if _, ok := stages["ResponseComplete"]; ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit log has stages %v for the TokenRequest %s, want RequestReceived and ResponseComplete", stages, auditID)
		}
		time.Sleep(100 * time.Millisecond) // the apiserver gives no signal for its audit writes
	}
	for _, stage := range []string{"RequestReceived", "ResponseComplete"} {
		e, ok := stages[stage]
		if !ok {
			t.Errorf("no %s event for the TokenRequest", stage)
			continue
		}
		if e.Level != "Request" {
			t.Errorf("%s: level %q, want Request", stage, e.Level)
		}
		if e.ObjectRef.Resource != "serviceaccounts" || e.ObjectRef.Subresource != "token" {
			t.Errorf("%s: objectRef %+v", stage, e.ObjectRef)
		}
		// The body is decoded after RequestReceived: only the completion has it.
		if stage == "ResponseComplete" && !bytes.Contains(e.RequestObject, []byte("tokenwatch-check")) {
			t.Errorf("%s: requestObject %s lacks the TokenRequest spec", stage, e.RequestObject)
		}
		if len(e.Response) != 0 {
			t.Errorf("%s: responseObject logged", stage)
		}
	}
	if bytes.Contains(data, []byte(tr.Status.Token)) {
		t.Error("the minted token is in the audit log")
	}
}
