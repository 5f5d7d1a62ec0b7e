package hostile

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/tokenwatch/tokenwatch/e2e/internal/auditwrite"
)

// newAuditLog returns a new temporary directory and the path of an audit
// log in it holding events written by writeAudit.
func newAuditLog(t *testing.T, events, systemEvery int) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "audit", "audit.log")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	writeAudit(t, path, events, systemEvery)
	return dir, path
}

// writeAudit appends events audit events of cluster prod to the log at
// path through kube-apiserver's own audit backend; every systemEvery-th is
// a kubelet's token request (0: none).
func writeAudit(t *testing.T, path string, events, systemEvery int) {
	t.Helper()
	if _, err := auditwrite.Run(context.Background(), auditwrite.Config{Path: path, Mode: auditwrite.Lumberjack,
		MaxSizeMB: 1024, Events: events, SystemEvery: systemEvery, Cluster: "prod"}); err != nil {
		t.Fatalf("write the audit log: %v", err)
	}
}
