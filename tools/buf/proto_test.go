// Package buf checks the repository's protobuf contract: buf lint passes and
// the committed generated Go code is what buf generate writes today.
package buf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// root is the repository root, two levels up from this module.
const root = "../.."

func build(t *testing.T, dir, out string, pkgs ...string) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"build", "-o", out + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, b)
	}
}

func tools(t *testing.T) (bufBin string, env []string) {
	t.Helper()
	bin := t.TempDir()
	build(t, ".", bin, "github.com/bufbuild/buf/cmd/buf")
	build(t, "../protoc-gen-go", bin, "google.golang.org/protobuf/cmd/protoc-gen-go", "google.golang.org/grpc/cmd/protoc-gen-go-grpc")
	return filepath.Join(bin, "buf"), append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func TestProtoContract(t *testing.T) {
	bufBin, env := tools(t)
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(bufBin, args...)
		cmd.Dir = root
		cmd.Env = env
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("buf %v: %v\n%s", args, err, b)
		}
	}
	t.Run("lint", func(t *testing.T) { run("lint") })
	t.Run("generated code is fresh", func(t *testing.T) {
		out := t.TempDir()
		run("generate", "--output", out)
		gen, err := filepath.Glob(filepath.Join(out, "proto", "*", "*", "*.pb.go"))
		if err != nil || len(gen) == 0 {
			t.Fatalf("buf generate wrote no Go files under %s (err %v)", out, err)
		}
		for _, g := range gen {
			rel, _ := filepath.Rel(out, g)
			want, err := os.ReadFile(g)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(root, rel))
			if err != nil {
				t.Errorf("%s: generated but not committed: %v", rel, err)
				continue
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is stale: run `buf generate` (see README) and commit the result", rel)
			}
		}
	})
}
