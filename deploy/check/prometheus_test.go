package check

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// promtoolBinary returns promtool built by deploy/prometheus/tool/build.sh;
// with -short only a cached one, skipping when there is none.
func promtoolBinary(t *testing.T) string {
	t.Helper()
	script := filepath.Join(repoRoot(t), "deploy", "prometheus", "tool", "build.sh")
	if testing.Short() {
		cmd := exec.Command("bash", script, "-cached")
		cmd.Env = append(os.Environ(), "TOKENWATCH_CACHE="+cacheDir(t))
		out, err := cmd.Output()
		if err != nil {
			t.Skip("SKIP (visible): -short and promtool is not built yet (deploy/prometheus/tool/build.sh builds it in several minutes)")
		}
		return strings.TrimSpace(string(out))
	}
	return runScript(t, 30*time.Minute, nil, script)
}

// TestPrometheusRules checks the alerting rules with promtool itself
// (check rules, then the unit tests of rules_test.yaml) and that the
// PrometheusRule of components/prometheus holds exactly the same groups.
func TestPrometheusRules(t *testing.T) {
	rules := deployPath(t, "prometheus", "rules.yaml")
	t.Run("PrometheusRule equals rules.yaml", func(t *testing.T) {
		var plain struct {
			Groups []any `json:"groups"`
		}
		readYAML(t, rules, &plain)
		var pr struct {
			Kind string `json:"kind"`
			Spec struct {
				Groups []any `json:"groups"`
			} `json:"spec"`
		}
		readYAML(t, deployPath(t, "components", "prometheus", "prometheusrule.yaml"), &pr)
		if pr.Kind != "PrometheusRule" || len(plain.Groups) == 0 {
			t.Fatalf("kind %q, %d groups in rules.yaml", pr.Kind, len(plain.Groups))
		}
		if !reflect.DeepEqual(plain.Groups, pr.Spec.Groups) {
			t.Error("components/prometheus/prometheusrule.yaml spec.groups differ from prometheus/rules.yaml groups")
		}
	})

	promtool := promtoolBinary(t)
	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules_test.yaml"}} {
		t.Run("promtool "+strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = filepath.Dir(rules)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			t.Logf("%s", strings.TrimSpace(string(out)))
		})
	}
}

// readYAML decodes one YAML file into v.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// prometheusOperator is the prometheus-operator release whose CRDs
// (monitoring.coreos.com/v1, in its Go module's example/prometheus-operator-crd)
// the PodMonitor, ServiceMonitor and PrometheusRule are checked against.
const prometheusOperator = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

// installPrometheusOperatorCRDs creates the prometheus-operator's
// CustomResourceDefinitions, from its module fetched through the Go module
// proxy (checksum-verified; not a dependency of this module: nothing of it is
// compiled), and waits until the server serves them.
func installPrometheusOperatorCRDs(t *testing.T, s *apiServer) {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", prometheusOperator)
	cmd.Dir = t.TempDir() // outside any module: go.mod and go.sum stay as they are
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", prometheusOperator, err, out)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", prometheusOperator, err, mod.Error)
	}
	for _, kind := range []string{"podmonitors", "servicemonitors", "prometheusrules"} {
		objs, err := readYAMLDocs(filepath.Join(mod.Dir, "example", "prometheus-operator-crd", "monitoring.coreos.com_"+kind+".yaml"))
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
	for _, kind := range []string{"PodMonitor", "ServiceMonitor", "PrometheusRule"} {
		for {
			_, err := s.discover("monitoring.coreos.com/v1", kind)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("monitoring.coreos.com/v1 %s not served: %v", kind, err)
			}
			time.Sleep(200 * time.Millisecond) // discovery has no watch to wait on
		}
	}
}
