package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// maxPolicyBytes bounds what is read of an audit policy file (real ones
// are a few KiB): a larger file is reported, not hashed.
const maxPolicyBytes = 4 << 20

// policyWatch digests the kube-apiserver's audit policy file for each
// heartbeat and logs when what it finds changes. It is safe for
// concurrent use.
type policyWatch struct {
	path string
	log  *slog.Logger

	mu         sync.Mutex
	sum, fault string // the last result
}

// newPolicyWatch watches path; nil when path is empty.
func newPolicyWatch(path string, log *slog.Logger) *policyWatch {
	if path == "" {
		return nil
	}
	return &policyWatch{path: path, log: log}
}

// status returns the heartbeat function: fol's state, and with pw the
// policy file's digest.
func status(fol reader, pw *policyWatch) func() *tokenwatchv1.Heartbeat {
	return func() *tokenwatchv1.Heartbeat {
		h := heartbeat(fol.Stats())
		if pw != nil {
			h.AuditPolicySha256, h.AuditPolicyError = pw.check()
		}
		return h
	}
}

// check digests the file now: its hex SHA-256, or why it cannot be read.
func (w *policyWatch) check() (sum, fault string) {
	sum, err := digestFile(w.path)
	if err != nil {
		fault = err.Error()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case sum == w.sum && fault == w.fault:
	case fault != "":
		w.log.Warn("audit policy file not readable", "path", w.path, "err", fault)
	case w.sum == "" && w.fault == "":
		w.log.Info("audit policy file watched", "path", w.path, "sha256", sum)
	case w.fault != "":
		w.log.Info("audit policy file readable again", "path", w.path, "sha256", sum)
	default:
		w.log.Warn("audit policy file changed", "path", w.path, "sha256", sum, "previous_sha256", w.sum)
	}
	w.sum, w.fault = sum, fault
	return sum, fault
}

// digestFile returns the hex SHA-256 of the regular file at path.
func digestFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", path)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if n > maxPolicyBytes {
		return "", errors.New(path + ": larger than 4 MiB, not an audit policy")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
