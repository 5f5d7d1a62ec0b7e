package check

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// docker runs the docker CLI and returns its trimmed stdout.
func docker(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := docker(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// requireDocker skips, visibly, when no Docker daemon answers.
func requireDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIP (visible): -short: the image test builds and runs containers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("SKIP (visible): no docker CLI on this machine: the image test cannot run")
	}
	if v, err := docker(ctx, "version", "--format", "{{.Server.Version}}"); err != nil {
		t.Skipf("SKIP (visible): no Docker daemon answers: %v", err)
	} else {
		t.Logf("Docker engine %s", v)
	}
}

// podRun turns a rendered pod's container into `docker run` options, with
// the manifest's security settings: user, read-only root filesystem,
// dropped capabilities, no privilege escalation (Docker's default seccomp
// profile is the runtime default). volumes maps each volume name to the host
// directory that stands for it; env overrides resolved variables.
func podRun(t *testing.T, objs []object, spec corev1.PodSpec, c corev1.Container, volumes map[string]string, env map[string]string) (opts, args []string) {
	t.Helper()
	sc := c.SecurityContext
	uid, gid := spec.SecurityContext.RunAsUser, spec.SecurityContext.RunAsGroup
	if sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if uid == nil {
		t.Fatalf("%s: no runAsUser", c.Name)
	}
	user := strconv.FormatInt(*uid, 10)
	if gid != nil {
		user += ":" + strconv.FormatInt(*gid, 10)
	}
	opts = append(opts, "--user", user)
	if spec.SecurityContext.FSGroup != nil {
		opts = append(opts, "--group-add", strconv.FormatInt(*spec.SecurityContext.FSGroup, 10))
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		opts = append(opts, "--read-only")
	}
	if sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			opts = append(opts, "--cap-drop", string(d))
		}
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		opts = append(opts, "--security-opt", "no-new-privileges")
	}
	for _, m := range c.VolumeMounts {
		host, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("%s: no host directory for volume %q", c.Name, m.Name)
		}
		mount := host + ":" + m.MountPath
		if m.ReadOnly {
			mount += ":ro"
		}
		opts = append(opts, "-v", mount)
	}
	vars := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Fatalf("%s: envFrom other than a ConfigMap", c.Name)
		}
		cm := find(objs, "ConfigMap", ef.ConfigMapRef.Name)
		if cm == nil {
			t.Fatalf("%s: ConfigMap %s not rendered", c.Name, ef.ConfigMapRef.Name)
		}
		for k, v := range cm["data"].(map[string]any) {
			vars[k] = v.(string)
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			vars[e.Name] = configMapValue(t, objs, e.ValueFrom.ConfigMapKeyRef)
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			// Set by the caller (the downward API).
		default:
			vars[e.Name] = e.Value
		}
	}
	for k, v := range env {
		vars[k] = v
	}
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		opts = append(opts, "-e", k+"="+vars[k])
	}
	for _, a := range c.Args {
		for k, v := range vars {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		args = append(args, a)
	}
	return opts, args
}

// certificateSpec reads the dnsNames and URIs of a rendered Certificate.
func certificateSpec(t *testing.T, objs []object, name string) (dns []string, uris []*url.URL) {
	t.Helper()
	cert := find(objs, "Certificate", name)
	if cert == nil {
		t.Fatalf("Certificate %s not rendered", name)
	}
	for _, d := range asStrings(cert.path("spec", "dnsNames")) {
		dns = append(dns, d)
	}
	for _, u := range asStrings(cert.path("spec", "uris")) {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		uris = append(uris, p)
	}
	return dns, uris
}

func asStrings(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// writeSecret writes ca.crt, tls.crt and tls.key into a new directory, with
// the ownership and mode the kubelet gives a Secret volume (defaultMode,
// group fsGroup).
func writeSecret(t *testing.T, dir, caFile, certFile, keyFile string, mode os.FileMode, gid int) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{"ca.crt": caFile, "tls.crt": certFile, "tls.key": keyFile} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 0, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var timestampRE = regexp.MustCompile(`"(requestReceivedTimestamp|stageTimestamp)":"([^"]+)"`)

// shiftTimestamps moves a genuine audit log's timestamps so that its first
// event happened now, as if the apiserver were writing it.
func shiftTimestamps(t *testing.T, data []byte) []byte {
	t.Helper()
	m := timestampRE.FindSubmatch(data)
	if m == nil {
		t.Fatal("no timestamps in the audit log")
	}
	first, err := time.Parse(time.RFC3339Nano, string(m[2]))
	if err != nil {
		t.Fatal(err)
	}
	delta := time.Since(first)
	return timestampRE.ReplaceAllFunc(data, func(b []byte) []byte {
		sm := timestampRE.FindSubmatch(b)
		ts, err := time.Parse(time.RFC3339Nano, string(sm[2]))
		if err != nil {
			t.Fatal(err)
		}
		return []byte(fmt.Sprintf(`"%s":"%s"`, sm[1], ts.Add(delta).UTC().Format("2006-01-02T15:04:05.000000Z")))
	})
}

// alertRecord is what the test reads of one exported token_request record.
type alertRecord struct {
	auditID, cluster, node, user, outcome string
}

// TestImages builds the agent, aggregator and collector images FROM scratch
// for amd64 and arm64 with the local Docker engine (checkImageArches), and
// runs the engine's own architecture's as the manifests of
// overlays/single-cluster and deploy/otelcol say: their args and
// environment, read-only root filesystems, every capability dropped, no
// privilege escalation, the manifests' users, the audit directory read-only
// and root's (mode 0600 files), mTLS certificates with the cert-manager
// Certificates' names and SPIFFE URI, on a user-defined network under the
// Services' DNS names. Genuine audit events appended to the log must arrive,
// exactly, as token_request records at the collector's SIEM exporter (a
// recording OTLP receiver on the host), routed there by deploy/otelcol's
// config.
func TestImages(t *testing.T) {
	requireDocker(t)
	objs := kustomizeBuild(t, deployPath(t, "overlays", "single-cluster"))
	var ds appsv1.DaemonSet
	var dep appsv1.Deployment
	decode(t, find(objs, "DaemonSet", "tokenwatch-agent"), &ds)
	decode(t, find(objs, "Deployment", "tokenwatch-aggregator"), &dep)
	agentC, aggC := ds.Spec.Template.Spec.Containers[0], dep.Spec.Template.Spec.Containers[0]

	// Build the images the overlay names, so the manifests run unchanged.
	prefix, tag, ok := strings.Cut(agentC.Image, ":")
	if !ok || !strings.HasSuffix(prefix, "/agent") || aggC.Image != strings.TrimSuffix(prefix, "/agent")+"/aggregator:"+tag {
		t.Fatalf("unexpected images %q, %q", agentC.Image, aggC.Image)
	}
	colObjs := kustomizeBuild(t, deployPath(t, "otelcol"))
	var col appsv1.Deployment
	decode(t, find(colObjs, "Deployment", "otel-collector"), &col)
	colC := col.Spec.Template.Spec.Containers[0]
	if colC.Image != strings.TrimSuffix(prefix, "/agent")+"/otelcol:"+tag {
		t.Fatalf("collector image %q does not match %q", colC.Image, agentC.Image)
	}
	runScript(t, 20*time.Minute, []string{"IMAGES=agent aggregator otelcol", "ARCHES=" + strings.Join(imageArches, " "),
		"IMAGE_PREFIX=" + strings.TrimSuffix(prefix, "/agent"), "TAG=" + tag},
		filepath.Join(repoRoot(t), "deploy", "images", "build.sh"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		refs := []string{agentC.Image, aggC.Image, colC.Image}
		for _, img := range []string{agentC.Image, aggC.Image, colC.Image} {
			for _, arch := range imageArches {
				refs = append(refs, img+"-"+arch)
			}
		}
		_, _ = docker(ctx, append([]string{"rmi"}, refs...)...)
	})
	checkImageArches(t, map[string]string{agentC.Image: "tokenwatch-agent", aggC.Image: "tokenwatch-aggregator", colC.Image: "tokenwatch-otelcol"})
	for _, img := range []string{agentC.Image, aggC.Image, colC.Image} {
		var layers []string
		if err := json.Unmarshal([]byte(mustDocker(t, "image", "inspect", "--format", "{{json .RootFS.Layers}}", img)), &layers); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s, %d layers", img, mustDocker(t, "image", "inspect", "--format", "{{.Size}} bytes", img), len(layers))
	}

	// Certificates as cert-manager would issue them from the overlay.
	dir := t.TempDir()
	p := newPKI(t, dir)
	aggDNS, _ := certificateSpec(t, objs, "tokenwatch-aggregator")
	_, agentURIs := certificateSpec(t, objs, "tokenwatch-agent")
	aggCert, aggKey := p.issue(t, "aggregator", &x509.Certificate{
		Subject: pkix.Name{CommonName: "tokenwatch-aggregator"}, DNSNames: aggDNS,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	agentCert, agentKey := p.issue(t, "agent", &x509.Certificate{
		URIs: agentURIs, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})

	// Host directories standing for the pods' volumes.
	fsGroup := int(*dep.Spec.Template.Spec.SecurityContext.FSGroup)
	auditDir := filepath.Join(dir, "audit")
	if err := os.Mkdir(auditDir, 0o700); err != nil {
		t.Fatal(err)
	}
	history, err := os.ReadFile(filepath.Join("testdata", "audit", "audit-2026-11-26T23-09-39.805.log.gz"))
	if err != nil {
		t.Fatal(err)
	}
	// A rotated backup that exists at first start is history: not read.
	if err := os.WriteFile(filepath.Join(auditDir, "audit-2026-11-26T23-09-39.805.log.gz"), history, 0o600); err != nil {
		t.Fatal(err)
	}
	auditLog := filepath.Join(auditDir, "audit.log")
	if err := os.WriteFile(auditLog, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	agentState := filepath.Join(dir, "agent-state")
	aggState := filepath.Join(dir, "aggregator-state")
	configDir := filepath.Join(dir, "config")
	for _, d := range []string{agentState, aggState, configDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A PersistentVolume with fsGroup: group-owned and group-writable.
	if err := os.Chown(aggState, 0, fsGroup); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(aggState, 0o2770); err != nil {
		t.Fatal(err)
	}
	writeConfigMaps(t, objs, dep.Spec.Template.Spec, configDir)
	colConfig, colData := filepath.Join(dir, "otelcol-config"), filepath.Join(dir, "otelcol-data")
	for _, d := range []string{colConfig, colData} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeConfigMaps(t, colObjs, col.Spec.Template.Spec, colConfig)
	if err := os.Chown(colData, 0, int(*col.Spec.Template.Spec.SecurityContext.FSGroup)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(colData, 0o2770); err != nil {
		t.Fatal(err)
	}
	agentTLS := writeSecret(t, filepath.Join(dir, "agent-tls"), p.caFile, agentCert, agentKey,
		os.FileMode(*ds.Spec.Template.Spec.Volumes[slices.IndexFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil })].Secret.DefaultMode), 0)
	aggTLS := writeSecret(t, filepath.Join(dir, "aggregator-tls"), p.caFile, aggCert, aggKey,
		os.FileMode(*dep.Spec.Template.Spec.Volumes[slices.IndexFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil })].Secret.DefaultMode), fsGroup)

	// A user-defined network; the aggregator answers to the name the agents
	// dial (the Service's DNS name).
	network := fmt.Sprintf("tokenwatch-check-%d", time.Now().UnixNano())
	mustDocker(t, "network", "create", network)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = docker(ctx, "network", "rm", network)
	})
	run := func(name string, opts []string, image string, args []string) string {
		t.Helper()
		full := append([]string{"run", "-d", "--name", name, "--network", network}, opts...)
		full = append(append(full, image), args...)
		id := mustDocker(t, full...)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if t.Failed() {
				logs, _ := exec.CommandContext(ctx, "docker", "logs", "--tail", "40", id).CombinedOutput()
				t.Logf("%s logs:\n%s", name, logs)
			}
			_, _ = docker(ctx, "rm", "-f", "-v", id)
		})
		return id
	}

	// The "SIEM": a recording OTLP receiver on the host, reached from the
	// network through its gateway address.
	gateway := mustDocker(t, "network", "inspect", "--format", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", network)
	lis, err := net.Listen("tcp", net.JoinHostPort(gateway, "0"))
	if err != nil {
		t.Fatalf("listen on the network's gateway %s: %v", gateway, err)
	}
	sink := &logSink{notify: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(srv, sink)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})

	aggregatorAddr, otlpEndpoint := "", ""
	for _, e := range agentC.Env {
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil && e.Name == "TOKENWATCH_AGGREGATOR" {
			aggregatorAddr = configMapValue(t, objs, e.ValueFrom.ConfigMapKeyRef)
		}
	}
	for _, e := range aggC.Env {
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil && e.Name == "TOKENWATCH_OTLP_ENDPOINT" {
			otlpEndpoint = configMapValue(t, objs, e.ValueFrom.ConfigMapKeyRef)
		}
	}
	colHost, _, _ := strings.Cut(otlpEndpoint, ":")
	if colHost != "otel-collector.observability.svc" {
		t.Fatalf("the overlay sends OTLP to %q, not deploy/otelcol's Service", otlpEndpoint)
	}
	colOpts, colArgs := podRun(t, colObjs, col.Spec.Template.Spec, colC,
		map[string]string{"config": colConfig, "operations": colData},
		map[string]string{"SIEM_OTLP_ENDPOINT": lis.Addr().String(), "SIEM_OTLP_INSECURE": "true"})
	colID := run(network+"-otelcol", append(colOpts, "--network-alias", colHost), colC.Image, colArgs)

	aggHost, _, _ := strings.Cut(aggregatorAddr, ":")
	aggOpts, aggArgs := podRun(t, objs, dep.Spec.Template.Spec, aggC,
		map[string]string{"state": aggState, "config": configDir, "tls": aggTLS}, nil)
	aggID := run(network+"-aggregator", append(aggOpts, "--network-alias", aggHost), aggC.Image, aggArgs)

	const node = "cp-1"
	agentOpts, agentArgs := podRun(t, objs, ds.Spec.Template.Spec, agentC,
		map[string]string{"audit": auditDir, "state": agentState, "tls": agentTLS},
		map[string]string{"NODE_NAME": node})
	metricsPort := port(t, "agent --metrics-addr", args(t, "agent", agentC, agentFlags)["metrics-addr"])
	agentID := run(network+"-agent", append(agentOpts, "-p", fmt.Sprintf("127.0.0.1::%d", metricsPort)), agentC.Image, agentArgs)

	// What Docker applied is what the manifests ask for.
	for _, id := range []string{colID, aggID, agentID} {
		var hc struct {
			ReadonlyRootfs bool
			CapDrop        []string
			SecurityOpt    []string
		}
		if err := json.Unmarshal([]byte(mustDocker(t, "inspect", "--format", "{{json .HostConfig}}", id)), &hc); err != nil {
			t.Fatal(err)
		}
		if !hc.ReadonlyRootfs || !slices.Contains(hc.CapDrop, "ALL") || !slices.Contains(hc.SecurityOpt, "no-new-privileges") {
			t.Fatalf("container %s: HostConfig %+v", id[:12], hc)
		}
	}

	// The agent is ready once connected to the aggregator (mTLS accepted).
	hostPort := mustDocker(t, "port", agentID, fmt.Sprintf("%d/tcp", metricsPort))
	probe := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	waitContainer(t, agentID, "agent /readyz", 90*time.Second, func() error {
		resp, err := probe.Get("http://" + strings.TrimSpace(strings.Split(hostPort, "\n")[0]) + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		return nil
	})

	// The apiserver appends: genuine events, timestamps moved to now.
	live, err := os.ReadFile(filepath.Join("testdata", "audit", "live.log"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(auditLog, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(shiftTimestamps(t, live)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	var expected []struct {
		AuditID string `json:"auditID"`
		User    string `json:"user"`
		Code    int    `json:"code"`
	}
	data, err := os.ReadFile(filepath.Join("testdata", "audit", "live.expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &expected); err != nil {
		t.Fatal(err)
	}
	cluster := ""
	for _, e := range agentC.Env {
		if e.Name == "TOKENWATCH_CLUSTER" {
			cluster = configMapValue(t, objs, e.ValueFrom.ConfigMapKeyRef)
		}
	}
	want := map[string]alertRecord{}
	for _, e := range expected {
		outcome := "success"
		if e.Code >= 400 {
			outcome = "failure"
		}
		want[e.AuditID] = alertRecord{auditID: e.AuditID, cluster: cluster, node: node, user: e.User, outcome: outcome}
	}

	got := map[string]alertRecord{}
	deadline := time.After(2 * time.Minute)
	for len(got) < len(want) {
		select {
		case <-sink.notify:
		case <-deadline:
			t.Fatalf("after 2m: %d of %d alerts at the SIEM: %v", len(got), len(want), got)
		}
		for _, lr := range sink.received() {
			if r, ok := tokenRequestRecord(lr); ok {
				got[r.auditID] = r
			}
		}
	}
	// Stop upstream first, as Kubernetes would on a rollout (SIGTERM, then
	// the grace period): each flushes and exits 0, and then everything sent
	// has reached the SIEM and is compared exactly.
	for _, c := range []struct{ name, id string }{{"agent", agentID}, {"aggregator", aggID}, {"collector", colID}} {
		mustDocker(t, "stop", "--time", "15", c.id)
		if code := mustDocker(t, "inspect", "--format", "{{.State.ExitCode}}", c.id); code != "0" {
			t.Errorf("%s exited %s on SIGTERM, want 0", c.name, code)
		}
	}
	clear(got)
	for _, lr := range sink.received() {
		if r, ok := tokenRequestRecord(lr); ok {
			if _, dup := got[r.auditID]; dup {
				t.Errorf("alert %s exported twice", r.auditID)
			}
			got[r.auditID] = r
		}
	}
	for id, w := range want {
		if g, ok := got[id]; !ok {
			t.Errorf("no alert for %s (%s)", id, w.user)
		} else if g != w {
			t.Errorf("alert %s = %+v, want %+v", id, g, w)
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("unexpected alert %+v (history or an excluded identity)", g)
		}
	}
	t.Logf("%d alerts received at the SIEM through agent, aggregator and collector images, %d expected", len(got), len(want))
}

// imageArches are the architectures deploy/images/build.sh builds by default.
var imageArches = []string{"amd64", "arm64"}

// elfMachines is the ELF machine of a linux/<arch> binary.
var elfMachines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// checkImageArches checks, for each image (name:tag, and the binary under
// /usr/local/bin it runs), that build.sh made one tag per architecture,
// name:tag-<arch>, whose config says linux/<arch> and whose binary is an ELF
// executable for that machine, and that name:tag, which the manifests run,
// is the Docker engine's own architecture's image.
func checkImageArches(t *testing.T, images map[string]string) {
	t.Helper()
	engineArch := mustDocker(t, "version", "--format", "{{.Server.Arch}}")
	if _, ok := elfMachines[engineArch]; !ok {
		t.Fatalf("Docker engine architecture %q is not one build.sh builds (%v)", engineArch, imageArches)
	}
	dir := t.TempDir()
	for img, binary := range images {
		for _, arch := range imageArches {
			ref := img + "-" + arch
			if got := mustDocker(t, "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ref); got != "linux/"+arch {
				t.Errorf("%s: platform %s, want linux/%s", ref, got, arch)
			}
			// The binary inside, not only the label: created, never started.
			id := mustDocker(t, "create", "--platform", "linux/"+arch, ref)
			out := filepath.Join(dir, arch+"-"+binary)
			_, err := docker(context.Background(), "cp", id+":/usr/local/bin/"+binary, out)
			mustDocker(t, "rm", id)
			if err != nil {
				t.Fatal(err)
			}
			f, err := elf.Open(out)
			if err != nil {
				t.Fatalf("%s: /usr/local/bin/%s: %v", ref, binary, err)
			}
			if f.Machine != elfMachines[arch] || f.Type != elf.ET_EXEC {
				t.Errorf("%s: /usr/local/bin/%s is %s %s, want %s %s", ref, binary, f.Type, f.Machine, elf.ET_EXEC, elfMachines[arch])
			}
			f.Close()
		}
		host, same := mustDocker(t, "image", "inspect", "--format", "{{.Id}}", img), mustDocker(t, "image", "inspect", "--format", "{{.Id}}", img+"-"+engineArch)
		if host != same {
			t.Errorf("%s is %s, not %s-%s (%s), the engine's architecture", img, host, img, engineArch, same)
		}
	}
	t.Logf("images for %v; %s runs here", imageArches, engineArch)
}

// waitContainer polls ready until it succeeds, the container stops, or the
// deadline passes (a container gives no other signal of readiness).
func waitContainer(t *testing.T, id, what string, timeout time.Duration, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = ready(); err == nil {
			return
		}
		if running := mustDocker(t, "inspect", "--format", "{{.State.Running}}", id); running != "true" {
			t.Fatalf("%s: container stopped", what)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not ready after %s: %v", what, timeout, err)
}

// tokenRequestRecord reads a token_request record's identifying attributes.
func tokenRequestRecord(lr *logspb.LogRecord) (alertRecord, bool) {
	if lr.GetEventName() != "tokenwatch.token_request" {
		return alertRecord{}, false
	}
	attrs := map[string]string{}
	for _, a := range lr.GetAttributes() {
		attrs[a.GetKey()] = a.GetValue().GetStringValue()
	}
	return alertRecord{
		auditID: attrs["kubernetes.audit.auditID"], cluster: attrs["k8s.cluster.name"],
		node: attrs["k8s.node.name"], user: attrs["user.name"], outcome: attrs["event.outcome"],
	}, true
}

// writeConfigMaps writes the data of the ConfigMaps a pod mounts into dir.
func writeConfigMaps(t *testing.T, objs []object, spec corev1.PodSpec, dir string) {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm := find(objs, "ConfigMap", v.ConfigMap.Name)
		if cm == nil {
			t.Fatalf("ConfigMap %s not rendered", v.ConfigMap.Name)
		}
		for k, val := range cm["data"].(map[string]any) {
			if err := os.WriteFile(filepath.Join(dir, k), []byte(val.(string)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestImagesManifestList pushes the agent image with build.sh's PUSH=1 to a
// real registry (CNCF Distribution, built by deploy/images/registry, on
// loopback with in-memory storage) and checks what a cluster's nodes pull:
// TAG is a manifest list of exactly the linux/amd64 and linux/arm64 images
// pushed as TAG-amd64 and TAG-arm64, and pulling TAG gives the engine its
// own architecture's image, which runs.
func TestImagesManifestList(t *testing.T) {
	requireDocker(t)
	registry := runScript(t, 10*time.Minute, nil, filepath.Join(repoRoot(t), "deploy", "images", "registry", "build.sh"))
	addr := freeAddr(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "registry.yaml")
	if err := os.WriteFile(config, []byte("version: 0.1\nlog:\n  level: warn\nstorage:\n  inmemory: {}\nhttp:\n  addr: "+addr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var regLog bytes.Buffer
	cmd := exec.Command(registry, "serve", config)
	cmd.Stdout, cmd.Stderr = &regLog, &regLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("registry log:\n%s", lastLines(regLog.String(), 20))
		}
	})
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry on %s not ready: %v", addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	prefix, tag := addr+"/tokenwatch-check", fmt.Sprintf("m%d", time.Now().UnixNano())
	image := prefix + "/agent:" + tag
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = docker(ctx, "manifest", "rm", image)
		_, _ = docker(ctx, "rmi", image, image+"-amd64", image+"-arm64")
	})
	runScript(t, 10*time.Minute, []string{"IMAGES=agent", "ARCHES=" + strings.Join(imageArches, " "), "PUSH=1", "REGISTRY_INSECURE=1",
		"IMAGE_PREFIX=" + prefix, "TAG=" + tag},
		filepath.Join(repoRoot(t), "deploy", "images", "build.sh"))

	// What the registry serves, asked as a node's engine asks.
	manifest := func(ref string) (mediaType, digest string, body []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/tokenwatch-check/agent/manifests/"+ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", strings.Join([]string{
			"application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json",
			"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json",
		}, ", "))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err = io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("registry: manifest %s: %s %v: %s", ref, resp.Status, err, body)
		}
		return resp.Header.Get("Content-Type"), resp.Header.Get("Docker-Content-Digest"), body
	}
	want := map[string]string{}
	for _, arch := range imageArches {
		_, digest, _ := manifest(tag + "-" + arch)
		want["linux/"+arch] = digest
	}
	mediaType, _, body := manifest(tag)
	var list struct {
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
			} `json:"platform"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range list.Manifests {
		got[m.Platform.OS+"/"+m.Platform.Architecture] = m.Digest
	}
	if !strings.Contains(mediaType, "manifest.list") && !strings.Contains(mediaType, "image.index") {
		t.Errorf("%s is %s, not a manifest list", image, mediaType)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s lists %v, want the pushed per-architecture images %v", image, got, want)
	}

	// A node pulls the one name and gets its own architecture.
	mustDocker(t, "rmi", image)
	mustDocker(t, "pull", "--quiet", image)
	engineArch := mustDocker(t, "version", "--format", "{{.Server.Arch}}")
	if arch := mustDocker(t, "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image); arch != "linux/"+engineArch {
		t.Errorf("pulled %s: %s, want linux/%s", image, arch, engineArch)
	}
	if out := mustDocker(t, "run", "--rm", image, "--version"); !strings.Contains(out, tag) {
		t.Errorf("%s --version: %q, want the version %s", image, out, tag)
	}
	t.Logf("%s: manifest list of %v; pulled and ran linux/%s", image, got, engineArch)
}
