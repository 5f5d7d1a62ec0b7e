package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// ErrNoHistory is returned by BuildAgentAt when the commit is not in the
// repository (a shallow clone, or a source tree without .git): tests skip
// with its message.
var ErrNoHistory = errors.New("commit not in this repository's history")

// BuildAgentAt builds the agent of an earlier commit of the repository the
// tests run in (found with `git rev-parse --show-toplevel`): a temporary
// `git worktree` of that commit, `go build ./agent`, the worktree removed.
// The binary is cached under $TOKENWATCH_CACHE (default
// $HOME/.cache/tokenwatch) by commit and Go version, as the kube-apiserver
// build is.
func BuildAgentAt(commit string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	top, err := git(root, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoHistory, err)
	}
	full, err := git(top, "rev-parse", "--verify", "--quiet", commit+"^{commit}")
	if err != nil {
		return "", fmt.Errorf("%w: %s (shallow clone?)", ErrNoHistory, commit)
	}
	cache := os.Getenv("TOKENWATCH_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cache directory: %w", err)
		}
		cache = filepath.Join(home, ".cache", "tokenwatch")
	}
	dir := filepath.Join(cache, "agent-"+full[:12]+"-"+runtime.Version())
	bin := filepath.Join(dir, "agent")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp("", "tokenwatch-worktree-")
	if err != nil {
		return "", fmt.Errorf("worktree directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	if _, err := git(top, "worktree", "add", "--detach", src, full); err != nil {
		return "", fmt.Errorf("git worktree add %s: %w", commit, err)
	}
	defer func() { _, _ = git(top, "worktree", "remove", "--force", src) }()
	rel, err := filepath.Rel(top, root)
	if err != nil {
		return "", fmt.Errorf("module directory: %w", err)
	}
	out, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", fmt.Errorf("build directory: %w", err)
	}
	defer os.RemoveAll(out)
	if err := goBuild(filepath.Join(src, rel), out, "./agent"); err != nil {
		return "", fmt.Errorf("agent at %s: %w", commit, err)
	}
	if err := os.Rename(filepath.Join(out, "agent"), bin); err != nil {
		return "", fmt.Errorf("cache agent at %s: %w", commit, err)
	}
	return bin, nil
}

func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
