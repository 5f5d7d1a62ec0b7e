package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/tokenwatch/tokenwatch/agent/internal/metrics"
	"github.com/tokenwatch/tokenwatch/internal/auditpolicy"
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

	mu               sync.Mutex
	sum, fault, gaps string // the last result
}

// newPolicyWatch watches path; nil when path is empty.
func newPolicyWatch(path string, log *slog.Logger) *policyWatch {
	if path == "" {
		return nil
	}
	return &policyWatch{path: path, log: log}
}

// status returns the heartbeat function: fol's state, with fw the format of
// the live audit log, rw its rotation size, and with pw the policy file's
// digest.
func status(fol reader, fw *formatWatch, rw *rotationWatch, pw *policyWatch) func() *tokenwatchv1.Heartbeat {
	return func() *tokenwatchv1.Heartbeat {
		h := heartbeat(fol.Stats())
		h.AuditLogFormatError = fw.check()
		h.AuditLogRotationBytes = uint64(rw.check())
		if pw != nil {
			h.AuditPolicySha256, h.AuditPolicyError, h.AuditPolicyGaps = pw.check()
		}
		return h
	}
}

// state is the file's state for tokenwatch_agent_audit_policy_state, as
// checked now.
func (w *policyWatch) state() string {
	_, fault, gaps := w.check()
	switch {
	case fault != "":
		return metrics.PolicyUnread
	case gaps != "":
		return metrics.PolicyHides
	}
	return metrics.PolicyLogged
}

// check digests the file now: its hex SHA-256 and which token requests
// it keeps out of the audit log (see read), or why it cannot be read.
func (w *policyWatch) check() (sum, fault, gaps string) {
	data, err := readPolicy(w.path)
	if err != nil {
		fault = err.Error()
	} else {
		d := sha256.Sum256(data)
		sum = hex.EncodeToString(d[:])
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case sum == w.sum:
		gaps = w.gaps // the same file: the same gaps
	case fault == "":
		gaps = w.read(data)
	}
	w.logChange(sum, fault, gaps)
	w.sum, w.fault, w.gaps = sum, fault, gaps
	return sum, fault, gaps
}

// logChange logs what changed since the last check, once; a policy that
// keeps token requests out of the log is a warning.
func (w *policyWatch) logChange(sum, fault, gaps string) {
	level, attrs := slog.LevelInfo, []any{"path", w.path, "sha256", sum}
	if gaps != "" {
		level, attrs = slog.LevelWarn, append(attrs, "token_requests_unlogged", gaps)
	}
	ctx := context.Background()
	switch {
	case sum == w.sum && fault == w.fault:
	case fault != "":
		w.log.Warn("audit policy file not readable", "path", w.path, "err", fault)
	case w.sum == "" && w.fault == "":
		w.log.Log(ctx, level, "audit policy file watched", attrs...)
	case w.fault != "":
		w.log.Log(ctx, level, "audit policy file readable again", attrs...)
	default:
		w.log.Log(ctx, slog.LevelWarn, "audit policy file changed", append(attrs, "previous_sha256", w.sum)...)
	}
}

// maxGaps bounds the gaps sent in a heartbeat.
const maxGaps = 1024

// read reads a new content of the file: it returns the token requests the
// policy keeps out of the audit log ("" for none), or says that it is not a
// policy the agent can read, in at most maxGaps bytes; and it warns of the
// rules that write minted tokens into the audit log (not a blind spot: a
// leak of the very credentials tokenwatch watches).
func (w *policyWatch) read(data []byte) string {
	var gaps string
	if p, err := auditpolicy.Parse(data); err != nil {
		gaps = "not an audit policy tokenwatch can read (" + err.Error() + ")"
	} else {
		gaps = auditpolicy.Describe(p.Gaps())
		if leaks := p.Leaks(); len(leaks) > 0 {
			w.log.Warn("audit policy writes minted tokens into the audit log in clear text; keep token requests at level Request",
				"path", w.path, "rules", auditpolicy.Describe(leaks))
		}
	}
	if len(gaps) > maxGaps {
		gaps = gaps[:maxGaps] + "..."
	}
	return gaps
}

// readPolicy returns the content of the regular file at path, at most
// maxPolicyBytes.
func readPolicy(path string) ([]byte, error) {
	f, _, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxPolicyBytes {
		return nil, errors.New(path + ": larger than 4 MiB, not an audit policy")
	}
	return data, nil
}

// CheckAuditPolicy reads the audit policy at path and returns the rules
// that keep token requests out of the audit log (see auditpolicy.Gaps) and
// those that log the minted tokens (auditpolicy.Leaks).
func CheckAuditPolicy(path string) (gaps, leaks []auditpolicy.Gap, err error) {
	data, err := readPolicy(path)
	if err != nil {
		return nil, nil, fmt.Errorf("check audit policy: %w", err)
	}
	p, err := auditpolicy.Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("check audit policy %s: %w", path, err)
	}
	return p.Gaps(), p.Leaks(), nil
}

// openRegular opens the regular file at path and returns its size.
func openRegular(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s: not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}
