package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// repoRoot returns the repository root: this module lives in deploy/check.
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Clean(filepath.Join(wd, "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "deploy", "overlays")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

// deployPath joins elem under the repository's deploy directory.
func deployPath(t testing.TB, elem ...string) string {
	return filepath.Join(append([]string{repoRoot(t), "deploy"}, elem...)...)
}

// overlays lists every directory under deploy/overlays: a new overlay is
// checked without touching the tests.
func overlays(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir(deployPath(t, "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		t.Fatal("no overlays under deploy/overlays")
	}
	sort.Strings(names)
	return names
}

// object is one rendered Kubernetes object.
type object map[string]any

func (o object) kind() string       { s, _ := o["kind"].(string); return s }
func (o object) apiVersion() string { s, _ := o["apiVersion"].(string); return s }
func (o object) name() string       { s, _ := o.path("metadata", "name").(string); return s }
func (o object) namespace() string  { s, _ := o.path("metadata", "namespace").(string); return s }
func (o object) String() string {
	return fmt.Sprintf("%s %s/%s", o.kind(), o.namespace(), o.name())
}

// path walks nested maps; nil when a step is missing.
func (o object) path(keys ...string) any {
	var cur any = map[string]any(o)
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

// kustomizeBuild renders a kustomization directory in-process with the
// kustomize API, with kustomize's default options (the load restrictions of
// `kubectl apply -k` included).
func kustomizeBuild(t testing.TB, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []object
	for _, r := range m.Resources() {
		mp, err := r.Map()
		if err != nil {
			t.Fatalf("kustomize build %s: %s: %v", dir, r.CurId(), err)
		}
		objs = append(objs, object(mp))
	}
	return objs
}

// find returns the single object of kind and name, or nil.
func find(objs []object, kind, name string) object {
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	return nil
}

// cacheDir is where built tools are kept between runs.
func cacheDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("TOKENWATCH_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(home, ".cache", "tokenwatch")
}

// runScript runs a build script that prints a path as its last line of
// stdout, and returns that line. Its stderr goes to the test log. env adds
// environment variables.
func runScript(t testing.TB, timeout time.Duration, env []string, script string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Env = append(append(os.Environ(), "TOKENWATCH_CACHE="+cacheDir(t)), env...)
	start := time.Now()
	err := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("%s:\n%s", filepath.Base(script), lastLines(s, 40))
	}
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	t.Logf("%s took %s", script, time.Since(start).Round(time.Second))
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1]
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// readYAMLDocs splits a multi-document YAML file into objects.
func readYAMLDocs(path string) ([]object, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var objs []object
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		if o == nil {
			continue
		}
		objs = append(objs, o)
	}
	if len(objs) == 0 {
		return nil, errors.New("no objects in " + path)
	}
	return objs, nil
}
