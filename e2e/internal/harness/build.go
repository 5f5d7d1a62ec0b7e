// Package harness runs tokenwatch as real processes for end-to-end tests: it
// builds the binaries once, starts and stops them with their output captured
// to files, waits on readiness signals instead of sleeping, hands out free
// loopback ports and receives OTLP with the OpenTelemetry Collector's own
// otlpreceiver.
package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// RootModule is the module path of the product.
const RootModule = "github.com/tokenwatch/tokenwatch"

// Binaries locates the product's programs built for this test run.
type Binaries struct {
	Dir        string
	Agent      string
	Aggregator string
	// GenAudit is the sample log generator; empty with GenAuditErr set when it
	// does not build (yet).
	GenAudit    string
	GenAuditErr error
}

// RepoRoot walks up from the working directory to the directory whose go.mod
// declares RootModule.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for {
		if mod, err := modulePath(filepath.Join(dir, "go.mod")); err == nil && mod == RootModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find repo root: no go.mod of %s above the working directory", RootModule)
		}
		dir = parent
	}
}

func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	return "", errors.New("no module line")
}

// Build compiles ./agent and ./aggregator of the repository into dir with
// `go build`, as a user would, and the sample log generator if it exists. An
// error from the two product binaries is fatal for every test that needs them;
// the generator's is kept in GenAuditErr.
func Build(dir string) (*Binaries, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	if err := goBuild(root, dir, "./agent", "./aggregator"); err != nil {
		return nil, fmt.Errorf("build agent and aggregator: %w", err)
	}
	b := &Binaries{
		Dir:        dir,
		Agent:      filepath.Join(dir, "agent"),
		Aggregator: filepath.Join(dir, "aggregator"),
	}
	b.GenAuditErr = errors.New("no generator package found (cmd/genaudit or internal/auditgen/cmd/genaudit)")
	for _, pkg := range []string{"./cmd/genaudit", "./internal/auditgen/cmd/genaudit"} {
		if _, err := os.Stat(filepath.Join(root, pkg)); err != nil {
			continue
		}
		if err := goBuild(root, dir, pkg); err != nil {
			b.GenAuditErr = fmt.Errorf("build %s: %w", pkg, err)
			break
		}
		b.GenAudit, b.GenAuditErr = filepath.Join(dir, "genaudit"), nil
		break
	}
	return b, nil
}

func goBuild(root, dir string, pkgs ...string) error {
	args := append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
