package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/follow"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// How often the live audit log's state is looked at, and how often a
// missing or unreadable one is warned about again while it lasts.
var (
	auditLogCheckEvery = time.Second
	auditLogWarnEvery  = time.Minute
)

// auditLogProblem returns why the live audit log cannot be read, nil when
// it can (or has not been looked at yet).
func auditLogProblem(path string, st follow.Stats) error {
	switch st.Live {
	case follow.LiveAbsent:
		return fmt.Errorf("audit log %s is absent: %s", path, st.LiveErr)
	case follow.LiveUnreadable:
		return fmt.Errorf("audit log %s is unreadable: %s", path, st.LiveErr)
	}
	return nil
}

// watchAuditLog warns when the live audit log is absent or unreadable, at
// once and then every auditLogWarnEvery while it lasts, and says when it
// can be read again. It returns when ctx ends.
func watchAuditLog(ctx context.Context, path string, stats func() follow.Stats, log *slog.Logger) {
	t := time.NewTicker(auditLogCheckEvery)
	defer t.Stop()
	var last follow.LiveState
	var warned time.Time
	for {
		st := stats()
		bad := auditLogProblem(path, st) != nil
		switch {
		case bad && (st.Live != last || time.Since(warned) >= auditLogWarnEvery):
			log.Warn("audit log not readable: nothing is read from this node until it is; the agent is not ready",
				"audit_log", path, "state", string(st.Live), "err", st.LiveErr)
			warned = time.Now()
		case !bad && st.Live == follow.LivePresent && (last == follow.LiveAbsent || last == follow.LiveUnreadable):
			log.Info("audit log readable again", "audit_log", path)
			warned = time.Time{}
		}
		if st.Live != "" {
			last = st.Live
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fileState is the wire form of a live file state.
func fileState(st follow.LiveState) tokenwatchv1.AuditFileState {
	switch st {
	case follow.LivePresent:
		return tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_PRESENT
	case follow.LiveAbsent:
		return tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_ABSENT
	case follow.LiveUnreadable:
		return tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_UNREADABLE
	}
	return tokenwatchv1.AuditFileState_AUDIT_FILE_STATE_UNSPECIFIED
}
