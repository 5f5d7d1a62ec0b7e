package check

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
)

// helmNamespace is the namespace the chart is rendered for: the kustomize
// overlays' namespace, so that the two renders compare.
const helmNamespace = "tokenwatch"

// helmBinary returns helm, built from the Go module proxy by
// deploy/helm/tool/build.sh (cached; about a minute cold). With -short it only
// takes a cached binary and skips, saying so, when there is none.
func helmBinary(t *testing.T) string {
	t.Helper()
	script := filepath.Join(repoRoot(t), "deploy", "helm", "tool", "build.sh")
	if testing.Short() {
		cmd := exec.Command("bash", script, "-cached")
		cmd.Env = append(os.Environ(), "TOKENWATCH_CACHE="+cacheDir(t))
		out, err := cmd.Output()
		if err != nil {
			t.Skip("SKIP (visible): -short and helm is not built yet (deploy/helm/tool/build.sh builds it in about a minute)")
		}
		return strings.TrimSpace(string(out))
	}
	return runScript(t, 20*time.Minute, nil, script)
}

// helmShapes maps each values file under deploy/helm/values to its path; each
// is named after the kustomize overlay it mirrors.
func helmShapes(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(deployPath(t, "helm", "values", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	shapes := map[string]string{}
	for _, f := range files {
		shapes[strings.TrimSuffix(filepath.Base(f), ".yaml")] = f
	}
	for _, want := range []string{"single-cluster", "hub", "spoke"} {
		if shapes[want] == "" {
			t.Fatalf("no deploy/helm/values/%s.yaml", want)
		}
	}
	return shapes
}

// sortedKeys returns m's keys in order, so that subtests run in a stable order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// helmError is a failed helm command, with what it printed on stderr.
type helmError struct {
	args   []string
	err    error
	stderr string
}

func (e *helmError) Error() string {
	return fmt.Sprintf("helm %s: %v\n%s", strings.Join(e.args, " "), e.err, e.stderr)
}

// runHelm runs helm with args and returns its stdout; a failure is a
// *helmError.
func runHelm(helm string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, helm, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// No repositories, plugins or caches of the user's: a clean helm home.
	home, err := os.MkdirTemp("", "helm-home-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(home)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &helmError{args: args, err: err, stderr: stdout.String() + stderr.String()}
	}
	return stdout.Bytes(), nil
}

// helmTemplate renders the chart with a shape's values file and more
// arguments (--set ...), as `helm template` does for `helm install`.
func helmTemplate(t *testing.T, helm, values string, extra ...string) []object {
	t.Helper()
	args := append([]string{"template", "tokenwatch", deployPath(t, "helm", "tokenwatch"),
		"--namespace", helmNamespace, "-f", values}, extra...)
	out, err := runHelm(helm, args...)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	objs, err := readYAMLDocs(path)
	if err != nil {
		t.Fatalf("helm template %s: %v", values, err)
	}
	return objs
}

// TestHelmLint runs `helm lint --strict` (values schema included) on the chart
// with each shape's values, with the hub exposed through a NodePort and with
// the prometheus-operator objects on.
func TestHelmLint(t *testing.T) {
	helm := helmBinary(t)
	shapes := helmShapes(t)
	type lintCase struct {
		name string
		args []string
	}
	var cases []lintCase
	for _, name := range sortedKeys(shapes) {
		cases = append(cases, lintCase{name, []string{"-f", shapes[name]}})
	}
	cases = append(cases, lintCase{"hub NodePort", []string{"-f", shapes["hub"], "--set", "expose.type=NodePort,expose.nodePort=31443"}},
		lintCase{"prometheus", []string{"-f", shapes["single-cluster"], "--set", "prometheus.enabled=true"}},
		lintCase{"prometheus spoke", []string{"-f", shapes["spoke"], "--set", "prometheus.enabled=true"}})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := runHelm(helm, append([]string{"lint", "--strict", "--namespace", helmNamespace,
				deployPath(t, "helm", "tokenwatch")}, c.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", bytes.TrimSpace(out))
		})
	}
}

// TestHelmRefusesBadValues: values that would render a broken or unsafe
// install stop `helm template` with a message that names the value.
func TestHelmRefusesBadValues(t *testing.T) {
	helm := helmBinary(t)
	shapes := helmShapes(t)
	tests := []struct {
		name   string
		values string
		set    string
		want   string
	}{
		{"no cluster name", "single-cluster", "cluster.name=", "cluster.name is required"},
		{"exposure type", "hub", "expose.type=ClusterIP", "at '/expose/type': value must be one of 'LoadBalancer', 'NodePort'"},
		{"exposed to everyone", "hub", "expose.sourceRanges=null", "expose.sourceRanges is required"},
		{"spoke without a hub", "spoke", "agent.aggregator=", "agent.aggregator is required"},
		{"unknown value", "single-cluster", "agent.image=x", "at '/agent': additional properties 'image' not allowed"},
		{"node port range", "hub", "expose.type=NodePort,expose.nodePort=8443", "at '/expose/nodePort': minimum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runHelm(helm, "template", "tokenwatch", deployPath(t, "helm", "tokenwatch"),
				"--namespace", helmNamespace, "-f", shapes[tt.values], "--set", tt.set)
			if err == nil {
				t.Fatalf("helm template -f %s --set %s succeeded, want an error about %q", tt.values, tt.set, tt.want)
			}
			// What helm printed, not the command line, must say it.
			var he *helmError
			if !errors.As(err, &he) || !strings.Contains(he.stderr, tt.want) {
				t.Errorf("helm template --set %s: %v, want an error about %q", tt.set, err, tt.want)
			}
		})
	}
}

// TestHelmTemplate renders each shape and holds it to what the kustomize
// overlays are held to (TestOverlays' checks), then requires it to equal the
// overlay of the same name in substance: the same objects (kind and name),
// with the same specs and data, once kustomize's ConfigMap name hashes are
// taken off; Helm may add labels and pod-template annotations. With
// prometheus.enabled, the single cluster equals the overlay that adds
// components/prometheus (testdata/prometheus) and the spoke the one that adds
// components/prometheus-agent (testdata/prometheus-spoke): no aggregator
// monitoring or rules where no aggregator runs.
func TestHelmTemplate(t *testing.T) {
	helm := helmBinary(t)
	shapes := helmShapes(t)
	for _, name := range sortedKeys(shapes) {
		t.Run(name, func(t *testing.T) {
			objs := helmTemplate(t, helm, shapes[name])
			checkRendered(t, objs)
			if _, err := os.Stat(deployPath(t, "overlays", name)); err != nil {
				t.Fatalf("no kustomize overlay %s to compare with: %v", name, err)
			}
			sameSubstance(t, kustomizeBuild(t, deployPath(t, "overlays", name)), objs)
		})
	}
	// agent.auditPolicyFile renders what components/audit-policy adds.
	t.Run("audit policy", func(t *testing.T) {
		objs := helmTemplate(t, helm, shapes["single-cluster"], "--set", "agent.auditPolicyFile=/etc/kubernetes/audit/policy.yaml")
		checkRendered(t, objs)
		sameSubstance(t, kustomizeBuild(t, deployPath(t, "check", "testdata", "audit-policy")), objs)
	})
	for _, c := range []struct{ name, shape, kit string }{
		{"prometheus", "single-cluster", "prometheus"},
		{"prometheus spoke", "spoke", "prometheus-spoke"},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs := helmTemplate(t, helm, shapes[c.shape], "--set", "prometheus.enabled=true")
			checkRendered(t, objs)
			sameSubstance(t, kustomizeBuild(t, deployPath(t, "check", "testdata", c.kit)), objs)
			// Each PrometheusRule's rules are its deploy/prometheus file's,
			// whatever the components hold; the aggregator's only with it.
			aggregator := find(objs, "Deployment", "tokenwatch-aggregator") != nil
			for _, rf := range []struct{ name, file string }{
				{"tokenwatch-agent", "agent-rules.yaml"},
				{"tokenwatch-aggregator", "aggregator-rules.yaml"},
			} {
				rule := find(objs, "PrometheusRule", rf.name)
				rendered := rf.name == "tokenwatch-agent" || aggregator
				if !rendered {
					if rule != nil || find(objs, "ServiceMonitor", "tokenwatch-aggregator") != nil {
						t.Errorf("the aggregator's PrometheusRule or ServiceMonitor rendered without an aggregator (%s)", c.shape)
					}
					continue
				}
				if rule == nil {
					t.Fatalf("no PrometheusRule %s with prometheus.enabled=true (%s)", rf.name, c.shape)
				}
				var plain struct {
					Groups []any `json:"groups"`
				}
				readYAML(t, deployPath(t, "prometheus", rf.file), &plain)
				got := deepCopy(t, object{"groups": rule.path("spec", "groups")})
				want := deepCopy(t, object{"groups": plain.Groups})
				if len(plain.Groups) == 0 || !reflect.DeepEqual(got, want) {
					t.Errorf("the chart's PrometheusRule %s spec.groups differ from deploy/prometheus/%s groups", rf.name, rf.file)
				}
			}
		})
	}
	// The chart's aggregator configuration and alerting rules are the kit's
	// (symbolic links).
	for file, kit := range map[string][]string{
		"aggregator.yaml":       {"config", "aggregator.yaml"},
		"agent-rules.yaml":      {"prometheus", "agent-rules.yaml"},
		"aggregator-rules.yaml": {"prometheus", "aggregator-rules.yaml"},
	} {
		want, err := os.ReadFile(deployPath(t, kit...))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(deployPath(t, "helm", "tokenwatch", "files", file)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("deploy/helm/tokenwatch/files/%s differs from deploy/%s (%v): link it", file, strings.Join(kit, "/"), err)
		}
	}
}

// TestHelmValues: each value the chart offers reaches the objects it is for,
// and the pods roll when their configuration changes.
func TestHelmValues(t *testing.T) {
	helm := helmBinary(t)
	single := helmShapes(t)["single-cluster"]
	config := filepath.Join(t.TempDir(), "aggregator.yaml")
	if err := os.WriteFile(config, []byte("budget:\n  max_alerts: 100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	container := func(objs []object, kind, name string) object {
		o := find(objs, kind, name)
		if o == nil {
			t.Fatalf("no %s %s", kind, name)
		}
		cs, _ := o.path("spec", "template", "spec", "containers").([]any)
		return object(cs[0].(map[string]any))
	}
	annotation := func(objs []object, kind, name, key string) any {
		return find(objs, kind, name).path("spec", "template", "metadata", "annotations", key)
	}
	base := helmTemplate(t, helm, single)
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, objs []object)
	}{
		{"images", []string{"--set", "images.agent.repository=registry.test/a,images.agent.tag=v9,images.aggregator.tag="}, func(t *testing.T, objs []object) {
			if got := container(objs, "DaemonSet", "tokenwatch-agent")["image"]; got != "registry.test/a:v9" {
				t.Errorf("agent image %v, want registry.test/a:v9", got)
			}
			if got := container(objs, "Deployment", "tokenwatch-aggregator")["image"]; got != "registry.example.com/tokenwatch/aggregator:v0.1.0" {
				t.Errorf("aggregator image %v, want the chart's appVersion as tag", got)
			}
		}},
		{"resources", []string{"--set", "agent.resources.limits.memory=256Mi,aggregator.resources.requests.cpu=250m"}, func(t *testing.T, objs []object) {
			if got := container(objs, "DaemonSet", "tokenwatch-agent").path("resources", "limits", "memory"); got != "256Mi" {
				t.Errorf("agent memory limit %v, want 256Mi", got)
			}
			if got := container(objs, "Deployment", "tokenwatch-aggregator").path("resources", "requests", "cpu"); got != "250m" {
				t.Errorf("aggregator cpu request %v, want 250m", got)
			}
		}},
		{"OTLP endpoint", []string{"--set", "aggregator.otlp.endpoint=collector.test:4318,aggregator.otlp.insecure=false"}, func(t *testing.T, objs []object) {
			cm := find(objs, "ConfigMap", "tokenwatch-aggregator-otlp")
			if got := cm.path("data", "TOKENWATCH_OTLP_ENDPOINT"); got != "collector.test:4318" {
				t.Errorf("TOKENWATCH_OTLP_ENDPOINT = %v", got)
			}
			var pol networkingv1.NetworkPolicy
			decode(t, find(objs, "NetworkPolicy", "tokenwatch-aggregator"), &pol)
			if !egressAllows(pol, 4318) {
				t.Error("the aggregator's NetworkPolicy does not let it reach the OTLP endpoint's port 4318")
			}
			if annotation(objs, "Deployment", "tokenwatch-aggregator", "checksum/otlp") == annotation(base, "Deployment", "tokenwatch-aggregator", "checksum/otlp") {
				t.Error("a new OTLP endpoint does not roll the aggregator")
			}
		}},
		{"aggregator config", []string{"--set-file", "aggregator.config=" + config}, func(t *testing.T, objs []object) {
			if got := find(objs, "ConfigMap", "tokenwatch-aggregator-config").path("data", "aggregator.yaml"); got != "budget:\n  max_alerts: 100\n" {
				t.Errorf("aggregator.yaml = %q, want the --set-file content", got)
			}
			if annotation(objs, "Deployment", "tokenwatch-aggregator", "checksum/config") == annotation(base, "Deployment", "tokenwatch-aggregator", "checksum/config") {
				t.Error("a new aggregator config does not roll the aggregator")
			}
		}},
		{"cluster name", []string{"--set", "cluster.name=prod-9"}, func(t *testing.T, objs []object) {
			checkRendered(t, objs) // the certificate's URI follows --cluster
			if annotation(objs, "DaemonSet", "tokenwatch-agent", "checksum/config") == annotation(base, "DaemonSet", "tokenwatch-agent", "checksum/config") {
				t.Error("a new cluster name does not roll the agents")
			}
		}},
		{"cert-manager off", []string{"--set", "certManager.enabled=false"}, func(t *testing.T, objs []object) {
			for _, o := range objs {
				if o.apiVersion() == "cert-manager.io/v1" {
					t.Errorf("%s rendered with certManager.enabled=false", o)
				}
			}
		}},
		{"own issuer", []string{"--set", "certManager.issuerRef.kind=ClusterIssuer,certManager.issuerRef.name=vault-pki"}, func(t *testing.T, objs []object) {
			certs := 0
			for _, o := range objs {
				if o.kind() == "Certificate" {
					certs++
				}
				switch {
				case o.kind() == "Issuer":
					t.Errorf("%s rendered with certManager.issuerRef set", o)
				case o.kind() == "Certificate" && (o.path("spec", "issuerRef", "kind") != "ClusterIssuer" || o.path("spec", "issuerRef", "name") != "vault-pki"):
					t.Errorf("%s: issuerRef %v, want ClusterIssuer vault-pki", o, o.path("spec", "issuerRef"))
				}
			}
			if certs != 2 {
				t.Errorf("%d Certificates, want the aggregator's and the agents'", certs)
			}
		}},
		{"storage class", []string{"--set", "aggregator.persistence.storageClassName=fast,aggregator.persistence.size=5Gi"}, func(t *testing.T, objs []object) {
			pvc := find(objs, "PersistentVolumeClaim", "tokenwatch-aggregator-state")
			if pvc.path("spec", "storageClassName") != "fast" || pvc.path("spec", "resources", "requests", "storage") != "5Gi" {
				t.Errorf("%s: spec %v, want storageClassName fast, 5Gi", pvc, pvc.path("spec"))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, helmTemplate(t, helm, single, tt.args...))
		})
	}
}

// checkRendered runs TestOverlays' checks on a render.
func checkRendered(t *testing.T, objs []object) {
	t.Helper()
	ds := find(objs, "DaemonSet", "tokenwatch-agent")
	dep := find(objs, "Deployment", "tokenwatch-aggregator")
	if ds == nil && dep == nil {
		t.Fatal("neither the agent DaemonSet nor the aggregator Deployment rendered")
	}
	checkCommon(t, objs)
	if ds != nil {
		checkAgent(t, objs, ds)
	}
	if dep != nil {
		checkAggregator(t, objs, dep)
	}
	checkCertificates(t, objs)
}

// TestHelmNodePort: expose.type NodePort renders what LoadBalancer renders
// but for the external Service's type (and the LoadBalancer-only source
// ranges, which the NetworkPolicy still applies); a spoke dialling a node
// port gets an egress rule for that port.
func TestHelmNodePort(t *testing.T) {
	helm := helmBinary(t)
	shapes := helmShapes(t)
	lb := helmTemplate(t, helm, shapes["hub"])
	np := helmTemplate(t, helm, shapes["hub"], "--set", "expose.type=NodePort,expose.nodePort=31443")
	checkRendered(t, np)

	svc := find(np, "Service", "tokenwatch-aggregator-external")
	if svc == nil {
		t.Fatal("no Service tokenwatch-aggregator-external")
	}
	if got := svc.path("spec", "type"); got != "NodePort" {
		t.Errorf("%s: type %v, want NodePort", svc, got)
	}
	if got := svc.path("spec", "externalTrafficPolicy"); got != "Local" {
		t.Errorf("%s: externalTrafficPolicy %v, want Local (the NetworkPolicy's ipBlocks need the agents' addresses)", svc, got)
	}
	if got := svc.path("spec", "loadBalancerSourceRanges"); got != nil {
		t.Errorf("%s: loadBalancerSourceRanges %v on a NodePort", svc, got)
	}
	ports, _ := svc.path("spec", "ports").([]any)
	if len(ports) != 1 || object(ports[0].(map[string]any)).path("nodePort") != float64(31443) {
		t.Errorf("%s: ports %v, want one with nodePort 31443", svc, ports)
	}
	// Otherwise the same objects.
	strip := func(objs []object) []object {
		var out []object
		for _, o := range objs {
			o = deepCopy(t, o)
			if o.kind() == "Service" && o.name() == "tokenwatch-aggregator-external" {
				spec := o["spec"].(map[string]any)
				delete(spec, "type")
				delete(spec, "loadBalancerSourceRanges")
				for _, p := range spec["ports"].([]any) {
					delete(p.(map[string]any), "nodePort")
				}
			}
			out = append(out, o)
		}
		return out
	}
	sameSubstance(t, strip(lb), strip(np))

	spoke := helmTemplate(t, helm, shapes["spoke"], "--set", "agent.aggregator=192.0.2.10:31443")
	checkRendered(t, spoke) // the agent's egress must allow the --aggregator port
}

// TestHelmControlPlane: a real kube-apiserver with cert-manager's and the
// prometheus-operator's CRDs accepts every shape's render and the single
// cluster's and the spoke's with prometheus.enabled (server-side apply, dry run, strict field
// validation), with the Pod Security verdicts the kustomize overlays get.
func TestHelmControlPlane(t *testing.T) {
	helm := helmBinary(t)
	shapes := helmShapes(t)
	s := startAPIServer(t, k8sBinaries(t))
	installCertManagerCRDs(t, s)
	installPrometheusOperatorCRDs(t, s)
	renders := map[string][]string{}
	for _, name := range sortedKeys(shapes) {
		renders[name] = []string{shapes[name]}
	}
	renders["hub NodePort"] = []string{shapes["hub"], "--set", "expose.type=NodePort,expose.nodePort=31443"}
	renders["prometheus"] = []string{shapes["single-cluster"], "--set", "prometheus.enabled=true"}
	renders["prometheus spoke"] = []string{shapes["spoke"], "--set", "prometheus.enabled=true"}
	for _, name := range append(sortedKeys(shapes), "hub NodePort", "prometheus", "prometheus spoke") {
		t.Run(name, func(t *testing.T) {
			r := renders[name]
			dryRunObjects(t, s, helmTemplate(t, helm, r[0], r[1:]...))
		})
	}
	t.Run("helm install, upgrade, uninstall", func(t *testing.T) {
		checkHelmLifecycle(t, s, helm, shapes)
	})
}

// checkHelmLifecycle runs deploy/helm/README.md's commands for real on s
// (which runs no controllers: objects are stored, no pod starts), in
// namespaces of their own: install with --create-namespace (the chart's
// Namespace applied over Helm's), an upgrade that renames the cluster, an
// uninstall that keeps the Namespace and the aggregator's state; and a spoke
// installed into a namespace made beforehand, with --take-ownership.
func checkHelmLifecycle(t *testing.T, s *apiServer, helm string, shapes map[string]string) {
	t.Helper()
	chart := deployPath(t, "helm", "tokenwatch")
	run := func(args ...string) {
		t.Helper()
		out, err := runHelm(helm, append(args, "--kubeconfig", s.kubeconfig)...)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "STATUS:") || strings.Contains(line, "uninstalled") || strings.HasPrefix(line, "[") {
				t.Logf("helm %s -n %s: %s", args[0], args[slices.Index(args, "-n")+1], line)
			}
		}
	}
	get := func(path string) (object, bool) {
		t.Helper()
		r, err := s.do(http.MethodGet, path, "", nil, http.StatusOK, http.StatusNotFound)
		if err != nil {
			t.Fatal(err)
		}
		var o object
		if err := json.Unmarshal(r.body, &o); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return o, o.kind() != "Status"
	}
	checkNamespace := func(ns string) {
		t.Helper()
		o, ok := get("/api/v1/namespaces/" + ns)
		if !ok || o.path("metadata", "labels", "pod-security.kubernetes.io/enforce") != "privileged" {
			t.Errorf("Namespace %s: labels %v, want pod-security.kubernetes.io/enforce=privileged", ns, o.path("metadata", "labels"))
		}
	}

	const ns = "tokenwatch-helm"
	run("install", "tokenwatch", chart, "-n", ns, "--create-namespace", "-f", shapes["single-cluster"])
	checkNamespace(ns)
	if _, ok := get("/apis/apps/v1/namespaces/" + ns + "/deployments/tokenwatch-aggregator"); !ok {
		t.Error("helm install: no Deployment tokenwatch-aggregator")
	}
	run("upgrade", "tokenwatch", chart, "-n", ns, "--reuse-values", "--set", "cluster.name=prod-2")
	cm, _ := get("/api/v1/namespaces/" + ns + "/configmaps/tokenwatch-agent")
	cert, _ := get("/apis/cert-manager.io/v1/namespaces/" + ns + "/certificates/tokenwatch-agent")
	if got := cm.path("data", "TOKENWATCH_CLUSTER"); got != "prod-2" {
		t.Errorf("helm upgrade: TOKENWATCH_CLUSTER = %v, want prod-2", got)
	}
	if got, _ := cert.path("spec", "uris").([]any); len(got) != 1 || got[0] != "spiffe://tokenwatch/cluster/prod-2" {
		t.Errorf("helm upgrade: agent certificate uris %v, want the new cluster name", got)
	}
	run("uninstall", "tokenwatch", "-n", ns)
	if _, ok := get("/apis/apps/v1/namespaces/" + ns + "/deployments/tokenwatch-aggregator"); ok {
		t.Error("helm uninstall left the Deployment tokenwatch-aggregator")
	}
	if _, ok := get("/api/v1/namespaces/" + ns + "/persistentvolumeclaims/tokenwatch-aggregator-state"); !ok {
		t.Error("helm uninstall removed the aggregator's state (PersistentVolumeClaim)")
	}
	checkNamespace(ns)

	const spoke = "tokenwatch-helm-spoke"
	bare := object{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": spoke}}
	if _, err := s.apply(bare, false); err != nil {
		t.Fatal(err)
	}
	run("install", "tokenwatch", chart, "-n", spoke, "--take-ownership", "-f", shapes["spoke"])
	checkNamespace(spoke)
	if _, ok := get("/apis/apps/v1/namespaces/" + spoke + "/daemonsets/tokenwatch-agent"); !ok {
		t.Error("helm install (spoke): no DaemonSet tokenwatch-agent")
	}
}

// deepCopy returns o through JSON: numbers become float64 whichever decoder
// produced them, so that renders by kustomize and by helm compare.
func deepCopy(t *testing.T, o object) object {
	t.Helper()
	data, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var c object
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// sameSubstance compares a kustomize render with a helm render: the same
// kinds and names; the kustomize labels present in helm's; and every field
// but metadata labels and annotations and the pod template's annotations
// equal, after kustomize's generated names (name-hash suffixes) are mapped to
// the plain names the chart uses.
func sameSubstance(t *testing.T, kust, helm []object) {
	t.Helper()
	helmNames := map[string]bool{}
	for _, o := range helm {
		helmNames[o.kind()+"/"+o.name()] = true
	}
	// kustomize's ConfigMap generator names carry a hash: name-<hash>.
	rename := map[string]string{}
	for _, o := range kust {
		if i := strings.LastIndex(o.name(), "-"); o.kind() == "ConfigMap" && i > 0 && helmNames["ConfigMap/"+o.name()[:i]] {
			rename[o.name()] = o.name()[:i]
		}
	}
	index := func(objs []object, rename map[string]string) map[string]object {
		m := map[string]object{}
		for _, o := range objs {
			o = renameStrings(deepCopy(t, o), rename).(object)
			m[o.kind()+"/"+o.name()] = o
		}
		return m
	}
	k, h := index(kust, rename), index(helm, nil)
	for _, key := range sortedObjectKeys(k) {
		if h[key] == nil {
			t.Errorf("%s: rendered by kustomize, not by helm", key)
		}
	}
	for _, key := range sortedObjectKeys(h) {
		ko, ho := k[key], h[key]
		if ko == nil {
			t.Errorf("%s: rendered by helm, not by kustomize", key)
			continue
		}
		for _, p := range [][]string{{"metadata"}, {"spec", "template", "metadata"}} {
			kl, _ := ko.path(append(p, "labels")...).(map[string]any)
			hl, _ := ho.path(append(p, "labels")...).(map[string]any)
			for name, v := range kl {
				if hl[name] != v {
					t.Errorf("%s: %s.labels[%s] = %v, kustomize has %v", key, strings.Join(p, "."), name, hl[name], v)
				}
			}
			for _, o := range []object{ko, ho} {
				if m, ok := o.path(p...).(map[string]any); ok {
					delete(m, "labels")
					delete(m, "annotations")
					if p[0] == "spec" && len(m) == 0 {
						delete(o.path("spec", "template").(map[string]any), "metadata")
					}
				}
			}
		}
		for _, d := range jsonDiff("", map[string]any(ko), map[string]any(ho)) {
			t.Errorf("%s: %s", key, d)
		}
	}
}

func sortedObjectKeys(m map[string]object) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// renameStrings replaces every string value of v found in rename.
func renameStrings(v any, rename map[string]string) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = renameStrings(e, rename)
		}
	case object:
		return object(renameStrings(map[string]any(v), rename).(map[string]any))
	case []any:
		for i, e := range v {
			v[i] = renameStrings(e, rename)
		}
	case string:
		if r, ok := rename[v]; ok {
			return r
		}
	}
	return v
}

// jsonDiff lists where two decoded JSON values differ, by path.
func jsonDiff(path string, kust, helm any) []string {
	km, kok := kust.(map[string]any)
	hm, hok := helm.(map[string]any)
	if kok && hok {
		keys := map[string]bool{}
		for k := range km {
			keys[k] = true
		}
		for k := range hm {
			keys[k] = true
		}
		var diffs []string
		names := make([]string, 0, len(keys))
		for k := range keys {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			diffs = append(diffs, jsonDiff(path+"."+k, km[k], hm[k])...)
		}
		return diffs
	}
	ka, kok := kust.([]any)
	ha, hok := helm.([]any)
	if kok && hok && len(ka) == len(ha) {
		var diffs []string
		for i := range ka {
			diffs = append(diffs, jsonDiff(fmt.Sprintf("%s[%d]", path, i), ka[i], ha[i])...)
		}
		return diffs
	}
	if !reflect.DeepEqual(kust, helm) {
		k, _ := json.Marshal(kust)
		h, _ := json.Marshal(helm)
		return []string{fmt.Sprintf("%s: helm has %s, kustomize %s", path, h, k)}
	}
	return nil
}
