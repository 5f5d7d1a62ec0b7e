package agent

import (
	"log/slog"
	"sync"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/follow"
)

// rotationWatch infers, for each heartbeat, the size at which kube-apiserver
// rotates the audit log (its --audit-log-maxsize) from the newest rotation,
// and warns when it is below audit.LargestTokenEvent: lumberjack refuses a
// line longer than that size, so a client can pad a TokenRequest out of
// the log. It logs each change once. It is safe for concurrent use.
type rotationWatch struct {
	path string
	log  *slog.Logger

	mu    sync.Mutex
	probe *follow.RotationProbe
	size  int64 // the last size logged
	fault string
}

func newRotationWatch(path string, log *slog.Logger) *rotationWatch {
	return &rotationWatch{path: path, log: log, probe: follow.NewRotationProbe(path, audit.LargestTokenEvent)}
}

// check returns the size inferred, 0 when unknown.
func (w *rotationWatch) check() int64 {
	if w == nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	size, err := w.probe.Size()
	fault := ""
	if err != nil {
		fault = err.Error()
	}
	if fault != w.fault && fault != "" {
		w.log.Warn("cannot read the audit log's rotated files to learn its rotation size", "audit_log", w.path, "err", fault)
	}
	w.fault = fault
	if size == w.size {
		return size
	}
	w.size = size
	mb := size >> 20
	switch {
	case size == 0:
	case size < audit.LargestTokenEvent:
		w.log.Warn("the audit log rotates below the largest token request event: kube-apiserver drops a longer event, so a client can pad a TokenRequest until its completion (outcome, audiences, the minted token's ID) never reaches the log; set --audit-log-maxsize to at least 19",
			"audit_log", w.path, "rotation_mb", mb)
	default:
		w.log.Info("audit log rotation size inferred", "audit_log", w.path, "rotation_mb", mb)
	}
	return size
}
