package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
)

// The flags of the contract (docs: CONTRACT "Agent flags", "Aggregator flags").
var (
	agentFlags = []string{
		"audit-log", "cluster", "node-name", "aggregator", "insecure", "tls-cert", "tls-key",
		"tls-ca", "state-dir", "start-at", "once", "once-timeout", "metrics-addr", "audit-policy-file",
	}
	aggregatorFlags = []string{
		"listen", "insecure", "tls-cert", "tls-key", "tls-client-ca", "trust-domain",
		"otlp-endpoint", "otlp-insecure", "state-dir", "config", "metrics-addr",
	}
)

// TestKustomizeBuild renders every base and overlay with the kustomize API.
func TestKustomizeBuild(t *testing.T) {
	dirs := []string{"base/namespace", "base/agent", "base/aggregator", "config", "otelcol"}
	for _, o := range overlays(t) {
		dirs = append(dirs, "overlays/"+o)
	}
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			objs := kustomizeBuild(t, deployPath(t, filepath.FromSlash(dir)))
			if len(objs) == 0 {
				t.Fatalf("kustomize build %s rendered nothing", dir)
			}
			t.Logf("%s: %d objects", dir, len(objs))
		})
	}
}

// TestOverlays checks what the issue asks of the rendered manifests, on every
// overlay: the agent's and the aggregator's pod settings, references that
// resolve, certificate identities that match the cluster names, and network
// policies that let the configured ports through.
func TestOverlays(t *testing.T) {
	for _, name := range overlays(t) {
		t.Run(name, func(t *testing.T) {
			objs := kustomizeBuild(t, deployPath(t, "overlays", name))
			ds := find(objs, "DaemonSet", "tokenwatch-agent")
			dep := find(objs, "Deployment", "tokenwatch-aggregator")
			if ds == nil && dep == nil {
				t.Fatal("overlay renders neither the agent DaemonSet nor the aggregator Deployment")
			}
			checkCommon(t, objs)
			if ds != nil {
				checkAgent(t, objs, ds)
			}
			if dep != nil {
				checkAggregator(t, objs, dep)
			}
			checkCertificates(t, objs)
		})
	}
}

// decode converts a rendered object into a typed one, refusing unknown fields.
func decode(t *testing.T, o object, into any) {
	t.Helper()
	data, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		t.Fatalf("decode %s: %v", o, err)
	}
}

func checkCommon(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		switch o.kind() {
		case "Namespace", "ClusterIssuer", "PriorityClass": // cluster-scoped
			continue
		}
		if o.namespace() != "tokenwatch" {
			t.Errorf("%s: namespace %q, want tokenwatch", o, o.namespace())
		}
	}
	ns := find(objs, "Namespace", "tokenwatch")
	if ns == nil {
		t.Fatal("Namespace tokenwatch not rendered")
	}
	if got := ns.path("metadata", "labels", "pod-security.kubernetes.io/enforce"); got != "privileged" {
		// The agent's hostPath volumes need it; anything stricter rejects its pods.
		t.Errorf("Namespace tokenwatch: pod-security enforce = %v, want privileged", got)
	}
}

// args parses --name=value arguments, failing on flags the contract lacks.
func args(t *testing.T, who string, c corev1.Container, known []string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, a := range c.Args {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !slices.Contains(known, name) {
			t.Errorf("%s: argument %q is not a contract flag", who, a)
			continue
		}
		got[name] = value
	}
	return got
}

func port(t *testing.T, who, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: address %q: %v", who, addr, err)
	}
	var n int32
	if _, err := fmt.Sscan(p, &n); err != nil {
		t.Fatalf("%s: port %q: %v", who, p, err)
	}
	return n
}

// configMapValue resolves a configMapKeyRef against the rendered ConfigMaps
// (whose names carry kustomize's hash suffix).
func configMapValue(t *testing.T, objs []object, ref *corev1.ConfigMapKeySelector) string {
	t.Helper()
	cm := find(objs, "ConfigMap", ref.Name)
	if cm == nil {
		t.Fatalf("ConfigMap %q referenced but not rendered", ref.Name)
	}
	v, ok := cm.path("data", ref.Key).(string)
	if !ok {
		t.Fatalf("ConfigMap %q has no key %q", ref.Name, ref.Key)
	}
	return v
}

// expand resolves $(VAR) references in args the way the kubelet does.
func expand(t *testing.T, objs []object, c corev1.Container, s string) string {
	t.Helper()
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			v = configMapValue(t, objs, e.ValueFrom.ConfigMapKeyRef)
		}
		s = strings.ReplaceAll(s, "$("+e.Name+")", v)
	}
	return s
}

func checkSecurityContext(t *testing.T, who string, psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) {
	t.Helper()
	if sc == nil {
		t.Fatalf("%s: no container securityContext", who)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation must be false", who)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", who)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem must be true", who)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: capabilities = %+v, want drop [ALL] and no add", who, sc.Capabilities)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && psc != nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile = %+v, want RuntimeDefault", who, seccomp)
	}
}

func checkProbesAndResources(t *testing.T, who string, c corev1.Container, metricsAddr string) {
	t.Helper()
	want := port(t, who, metricsAddr)
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", who, name)
			continue
		}
		got := p.HTTPGet.Port.IntVal
		if p.HTTPGet.Port.StrVal != "" {
			for _, cp := range c.Ports {
				if cp.Name == p.HTTPGet.Port.StrVal {
					got = cp.ContainerPort
				}
			}
		}
		if got != want {
			t.Errorf("%s: %s probe port %d, want the --metrics-addr port %d", who, name, got, want)
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("%s: liveness path %q, want /healthz", who, c.LivenessProbe.HTTPGet.Path)
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("%s: readiness path %q, want /readyz", who, c.ReadinessProbe.HTTPGet.Path)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("%s: no %s request", who, r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("%s: no %s limit", who, r)
		}
	}
	if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("%s: image %q has no pinned tag", who, c.Image)
	}
}

// mountOf returns the volume mounted at path, and the mount.
func mountOf(spec corev1.PodSpec, c corev1.Container, path string) (*corev1.Volume, *corev1.VolumeMount) {
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if m.MountPath != path {
			continue
		}
		for j := range spec.Volumes {
			if spec.Volumes[j].Name == m.Name {
				return &spec.Volumes[j], m
			}
		}
		return nil, m
	}
	return nil, nil
}

func checkAgent(t *testing.T, objs []object, o object) {
	t.Helper()
	var ds appsv1.DaemonSet
	decode(t, o, &ds)
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("agent: %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	a := args(t, "agent", c, agentFlags)

	if _, ok := spec.NodeSelector["node-role.kubernetes.io/control-plane"]; !ok {
		t.Errorf("agent: nodeSelector %v lacks node-role.kubernetes.io/control-plane", spec.NodeSelector)
	}
	tolerated := false
	for _, tol := range spec.Tolerations {
		if tol.Key == "node-role.kubernetes.io/control-plane" && tol.Operator == corev1.TolerationOpExists &&
			(tol.Effect == "" || tol.Effect == corev1.TaintEffectNoSchedule) {
			tolerated = true
		}
	}
	if !tolerated {
		t.Errorf("agent: no toleration for the control-plane taint: %+v", spec.Tolerations)
	}
	// Its own PriorityClass, above ordinary pods, below the system classes.
	if o := find(objs, "PriorityClass", spec.PriorityClassName); o == nil {
		t.Errorf("agent: priorityClassName %q is not rendered beside it", spec.PriorityClassName)
	} else {
		var pc schedulingv1.PriorityClass
		decode(t, o, &pc)
		// The API refuses user classes above one billion (the system classes'
		// range); above 0 is above ordinary pods.
		if pc.Value <= 0 || pc.Value > 1_000_000_000 || pc.GlobalDefault {
			t.Errorf("%s: value %d, globalDefault %v: want above 0, at most 1000000000, not the default",
				o, pc.Value, pc.GlobalDefault)
		}
	}

	// The audit directory: a read-only hostPath holding --audit-log.
	auditLog := a["audit-log"]
	if auditLog == "" {
		t.Fatal("agent: no --audit-log")
	}
	v, m := mountOf(spec, c, filepath.Dir(auditLog))
	if v == nil || v.HostPath == nil {
		t.Errorf("agent: the directory of --audit-log %s is not a hostPath volume", auditLog)
	} else if !m.ReadOnly {
		t.Errorf("agent: the audit directory is mounted read-write")
	}
	// The audit policy, when watched: its directory, a read-only hostPath
	// (the directory, so that a policy replaced by a rename is seen).
	if policy := a["audit-policy-file"]; policy != "" {
		v, m := mountOf(spec, c, filepath.Dir(policy))
		switch {
		case v == nil || v.HostPath == nil || v.HostPath.Path != filepath.Dir(policy):
			t.Errorf("agent: the directory of --audit-policy-file %s is not its hostPath volume", policy)
		case !m.ReadOnly:
			t.Errorf("agent: the audit policy directory is mounted read-write")
		}
	}
	// The checkpoint: a hostPath state directory.
	v, m = mountOf(spec, c, a["state-dir"])
	if v == nil || v.HostPath == nil || m.ReadOnly {
		t.Errorf("agent: --state-dir %q is not a writable hostPath volume", a["state-dir"])
	}
	// TLS files come from the tokenwatch-agent-tls Secret.
	for _, f := range []string{"tls-cert", "tls-key", "tls-ca"} {
		v, _ := mountOf(spec, c, filepath.Dir(a[f]))
		if v == nil || v.Secret == nil || v.Secret.SecretName != "tokenwatch-agent-tls" {
			t.Errorf("agent: --%s %q is not in the tokenwatch-agent-tls Secret", f, a[f])
		}
	}

	// uid 0 (the audit log is root's, 0600), nothing else of root's.
	uid := spec.SecurityContext.RunAsUser
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		uid = c.SecurityContext.RunAsUser
	}
	if uid == nil || *uid != 0 {
		t.Errorf("agent: runAsUser = %v, want 0", uid)
	}
	checkSecurityContext(t, "agent", spec.SecurityContext, c.SecurityContext)
	checkProbesAndResources(t, "agent", c, a["metrics-addr"])

	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("agent: NODE_NAME does not come from the downward API (spec.nodeName)")
	}
	if _, set := a["insecure"]; set {
		t.Error("agent: --insecure in a manifest")
	}
	cluster := expand(t, objs, c, a["cluster"])
	if cluster == "" || cluster == "change-me" || strings.Contains(cluster, "$(") {
		t.Errorf("agent: --cluster resolves to %q", cluster)
	}
	aggregator := expand(t, objs, c, a["aggregator"])
	aggPort := port(t, "agent --aggregator", aggregator)

	// The agent's NetworkPolicy lets it reach the aggregator.
	if np := find(objs, "NetworkPolicy", "tokenwatch-agent"); np == nil {
		t.Error("agent: no NetworkPolicy")
	} else {
		var pol networkingv1.NetworkPolicy
		decode(t, np, &pol)
		if !egressAllows(pol, aggPort) {
			t.Errorf("agent: NetworkPolicy egress does not allow TCP %d (--aggregator %s)", aggPort, aggregator)
		}
	}
}

func egressAllows(pol networkingv1.NetworkPolicy, p int32) bool {
	if !slices.Contains(pol.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		return true
	}
	for _, r := range pol.Spec.Egress {
		if len(r.Ports) == 0 {
			return true
		}
		for _, pp := range r.Ports {
			if pp.Port != nil && pp.Port.IntVal == p {
				return true
			}
		}
	}
	return false
}

func checkAggregator(t *testing.T, objs []object, o object) {
	t.Helper()
	var dep appsv1.Deployment
	decode(t, o, &dep)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Errorf("aggregator: replicas = %v, want 1", dep.Spec.Replicas)
	}
	if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("aggregator: strategy %q, want Recreate (one writer of the state volume)", dep.Spec.Strategy.Type)
	}
	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("aggregator: %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	a := args(t, "aggregator", c, aggregatorFlags)
	if _, set := a["insecure"]; set {
		t.Error("aggregator: --insecure in a manifest")
	}

	v, m := mountOf(spec, c, a["state-dir"])
	if v == nil || v.PersistentVolumeClaim == nil || m.ReadOnly {
		t.Errorf("aggregator: --state-dir %q is not a writable PersistentVolumeClaim", a["state-dir"])
	} else if find(objs, "PersistentVolumeClaim", v.PersistentVolumeClaim.ClaimName) == nil {
		t.Errorf("aggregator: PersistentVolumeClaim %q not rendered", v.PersistentVolumeClaim.ClaimName)
	}
	v, _ = mountOf(spec, c, filepath.Dir(a["config"]))
	if v == nil || v.ConfigMap == nil {
		t.Errorf("aggregator: --config %q is not in a ConfigMap volume", a["config"])
	} else if cm := find(objs, "ConfigMap", v.ConfigMap.Name); cm == nil {
		t.Errorf("aggregator: ConfigMap %q not rendered", v.ConfigMap.Name)
	} else if _, ok := cm.path("data", filepath.Base(a["config"])).(string); !ok {
		t.Errorf("aggregator: ConfigMap %q has no %s", v.ConfigMap.Name, filepath.Base(a["config"]))
	} else {
		// The ConfigMap holds deploy/config/aggregator.yaml unchanged.
		want, err := os.ReadFile(deployPath(t, "config", "aggregator.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.path("data", filepath.Base(a["config"])).(string); got != string(want) {
			t.Errorf("aggregator: ConfigMap %q differs from deploy/config/aggregator.yaml", v.ConfigMap.Name)
		}
	}
	for _, f := range []string{"tls-cert", "tls-key", "tls-client-ca"} {
		v, _ := mountOf(spec, c, filepath.Dir(a[f]))
		if v == nil || v.Secret == nil || v.Secret.SecretName != "tokenwatch-aggregator-tls" {
			t.Errorf("aggregator: --%s %q is not in the tokenwatch-aggregator-tls Secret", f, a[f])
		}
	}
	checkSecurityContext(t, "aggregator", spec.SecurityContext, c.SecurityContext)
	checkProbesAndResources(t, "aggregator", c, a["metrics-addr"])
	if endpoint := expand(t, objs, c, a["otlp-endpoint"]); strings.Contains(endpoint, "$(") {
		t.Errorf("aggregator: --otlp-endpoint does not resolve: %q", endpoint)
	}

	// The Service and the NetworkPolicy serve the --listen port.
	listen := port(t, "aggregator --listen", a["listen"])
	svc := find(objs, "Service", "tokenwatch-aggregator")
	if svc == nil {
		t.Fatal("aggregator: no Service")
	}
	var s corev1.Service
	decode(t, svc, &s)
	served := false
	for _, sp := range s.Spec.Ports {
		for _, cp := range c.Ports {
			if (sp.TargetPort.StrVal == cp.Name || sp.TargetPort.IntVal == cp.ContainerPort) && cp.ContainerPort == listen {
				served = true
			}
		}
	}
	if !served {
		t.Errorf("aggregator: Service does not route to the --listen port %d", listen)
	}
	np := find(objs, "NetworkPolicy", "tokenwatch-aggregator")
	if np == nil {
		t.Fatal("aggregator: no NetworkPolicy")
	}
	var pol networkingv1.NetworkPolicy
	decode(t, np, &pol)
	allowed := false
	for _, r := range pol.Spec.Ingress {
		for _, pp := range r.Ports {
			if pp.Port != nil && pp.Port.IntVal == listen {
				allowed = true
			}
		}
	}
	if !allowed {
		t.Errorf("aggregator: NetworkPolicy ingress does not allow the --listen port %d", listen)
	}
	// A LoadBalancer (when the overlay exposes the aggregator) keeps the
	// client address, which the NetworkPolicy's ipBlock rules rely on.
	for _, o := range objs {
		if o.kind() != "Service" || o.path("spec", "type") != "LoadBalancer" {
			continue
		}
		var lb corev1.Service
		decode(t, o, &lb)
		if lb.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("%s: externalTrafficPolicy %q, want Local", o, lb.Spec.ExternalTrafficPolicy)
		}
		if len(lb.Spec.LoadBalancerSourceRanges) == 0 {
			t.Errorf("%s: no loadBalancerSourceRanges", o)
		}
	}
}

// checkCertificates: the cert-manager Certificates issue what the pods mount,
// with SPIFFE identities in the aggregator's trust domain naming the cluster
// the agent claims.
func checkCertificates(t *testing.T, objs []object) {
	t.Helper()
	certs := map[string]object{} // by secretName
	for _, o := range objs {
		if o.kind() == "Certificate" {
			s, _ := o.path("spec", "secretName").(string)
			certs[s] = o
		}
	}
	if len(certs) == 0 {
		return // TLS Secrets are provided from elsewhere (overlays/spoke)
	}
	trustDomain := "tokenwatch"
	if dep := find(objs, "Deployment", "tokenwatch-aggregator"); dep != nil {
		var d appsv1.Deployment
		decode(t, dep, &d)
		if td := args(t, "aggregator", d.Spec.Template.Spec.Containers[0], aggregatorFlags)["trust-domain"]; td != "" {
			trustDomain = td
		}
	}
	if ds := find(objs, "DaemonSet", "tokenwatch-agent"); ds != nil {
		var d appsv1.DaemonSet
		decode(t, ds, &d)
		c := d.Spec.Template.Spec.Containers[0]
		cluster := expand(t, objs, c, args(t, "agent", c, agentFlags)["cluster"])
		cert := certs["tokenwatch-agent-tls"]
		if cert == nil {
			t.Fatal("no Certificate issues the agent's Secret tokenwatch-agent-tls")
		}
		want := []any{"spiffe://" + trustDomain + "/cluster/" + cluster}
		if got, _ := cert.path("spec", "uris").([]any); !slices.Equal(got, want) {
			t.Errorf("%s: uris %v, want %v (the agent's --cluster)", cert, got, want)
		}
	}
	if find(objs, "Deployment", "tokenwatch-aggregator") != nil && certs["tokenwatch-aggregator-tls"] == nil {
		t.Error("no Certificate issues the aggregator's Secret tokenwatch-aggregator-tls")
	}
	for s, cert := range certs {
		usages, _ := cert.path("spec", "usages").([]any)
		uris, _ := cert.path("spec", "uris").([]any)
		if slices.Contains(usages, any("client auth")) {
			if len(uris) != 1 || !strings.HasPrefix(uris[0].(string), "spiffe://"+trustDomain+"/cluster/") {
				t.Errorf("%s (%s): client certificate URIs %v, want one spiffe://%s/cluster/<name>", cert, s, uris, trustDomain)
			}
		}
		// A per-cluster intermediate (a spoke's CA): bound to one cluster,
		// which the aggregator holds what it signs to, and never able to
		// certify a server that agents would trust.
		if cert.path("spec", "isCA") == true && len(uris) > 0 {
			if !slices.Contains(usages, any("cert sign")) || !slices.Contains(usages, any("client auth")) ||
				slices.Contains(usages, any("server auth")) || slices.Contains(usages, any("any")) {
				t.Errorf("%s (%s): intermediate CA usages %v, want cert sign and client auth, no server auth", cert, s, usages)
			}
		}
	}
}
