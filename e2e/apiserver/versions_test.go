package apiserver

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuiltVersions checks that e2e/k8s/build.sh built the pinned releases
// with their versions stamped (kubeadm compares them with its configs).
func TestBuiltVersions(t *testing.T) {
	if k8sErr != nil {
		t.Fatalf("kube-apiserver/etcd did not build: %v", k8sErr)
	}
	tests := []struct {
		bin  string
		args []string
		want string
	}{
		{"kube-apiserver", []string{"--version"}, "Kubernetes v1.35.4"},
		{"kubeadm", []string{"version", "-o", "short"}, "v1.35.4"},
		{"etcd", []string{"--version"}, "etcd Version: 3.6.5"},
	}
	for _, tt := range tests {
		out, err := exec.Command(filepath.Join(k8sDir, tt.bin), tt.args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", tt.bin, tt.args, err, out)
			continue
		}
		if !strings.Contains(string(out), tt.want) {
			t.Errorf("%s %v = %q, want it to contain %q", tt.bin, tt.args, strings.TrimSpace(string(out)), tt.want)
		}
	}
}
