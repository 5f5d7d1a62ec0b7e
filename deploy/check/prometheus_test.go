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

// ruleFiles are deploy/prometheus's rule files, each with the
// PrometheusRule that holds the same groups: the agents' rules (every cluster
// with agents, a spoke too; components/prometheus-agent) and the aggregator's
// (where it runs; components/prometheus).
var ruleFiles = []struct{ file, component string }{
	{"agent-rules.yaml", "prometheus-agent"},
	{"aggregator-rules.yaml", "prometheus"},
}

// ruleTests are the promtool unit test files: rules_test.yaml loads every
// rule file, spoke_test.yaml only the agents' (a spoke's shape).
var ruleTests = []string{"rules_test.yaml", "spoke_test.yaml"}

// TestPrometheusRules checks the alerting rules with promtool itself
// (check rules, then the unit tests), that each PrometheusRule of the
// components holds exactly the groups of its rule file, that the unit tests
// name every alert and that the spoke's tests load the agents' rules alone.
func TestPrometheusRules(t *testing.T) {
	dir := deployPath(t, "prometheus")
	type ruleGroups struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	}
	alerts := map[string]string{} // alert name -> its rule file
	for _, rf := range ruleFiles {
		t.Run("PrometheusRule equals "+rf.file, func(t *testing.T) {
			var plain struct {
				Groups []any `json:"groups"`
			}
			readYAML(t, filepath.Join(dir, rf.file), &plain)
			var pr struct {
				Kind string `json:"kind"`
				Spec struct {
					Groups []any `json:"groups"`
				} `json:"spec"`
			}
			readYAML(t, deployPath(t, "components", rf.component, "prometheusrule.yaml"), &pr)
			if pr.Kind != "PrometheusRule" || len(plain.Groups) == 0 {
				t.Fatalf("kind %q, %d groups in %s", pr.Kind, len(plain.Groups), rf.file)
			}
			if !reflect.DeepEqual(plain.Groups, pr.Spec.Groups) {
				t.Errorf("components/%s/prometheusrule.yaml spec.groups differ from prometheus/%s groups", rf.component, rf.file)
			}
		})
		var rg ruleGroups
		readYAML(t, filepath.Join(dir, rf.file), &rg)
		for _, g := range rg.Groups {
			for _, r := range g.Rules {
				if other, dup := alerts[r.Alert]; dup {
					t.Errorf("alert %s in %s and %s", r.Alert, other, rf.file)
				}
				alerts[r.Alert] = rf.file
			}
		}
	}
	t.Run("unit tests cover every alert; the spoke loads agent rules only", func(t *testing.T) {
		tested := map[string]bool{}
		for _, f := range ruleTests {
			var ut struct {
				RuleFiles []string `json:"rule_files"`
				Tests     []struct {
					AlertRuleTest []struct {
						Alertname string `json:"alertname"`
					} `json:"alert_rule_test"`
				} `json:"tests"`
			}
			readYAML(t, filepath.Join(dir, f), &ut)
			for _, tc := range ut.Tests {
				for _, a := range tc.AlertRuleTest {
					tested[a.Alertname] = true
				}
			}
			if f == "spoke_test.yaml" && !reflect.DeepEqual(ut.RuleFiles, []string{"agent-rules.yaml"}) {
				t.Errorf("%s loads %v, want only agent-rules.yaml (what a spoke installs)", f, ut.RuleFiles)
			}
		}
		for a, f := range alerts {
			if !tested[a] {
				t.Errorf("alert %s (%s) has no promtool unit test", a, f)
			}
		}
	})

	promtool := promtoolBinary(t)
	check := []string{"check", "rules"}
	for _, rf := range ruleFiles {
		check = append(check, rf.file)
	}
	for _, args := range [][]string{check, append([]string{"test", "rules"}, ruleTests...)} {
		t.Run("promtool "+strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = dir
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
