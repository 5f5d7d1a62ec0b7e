package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"github.com/tokenwatch/tokenwatch/internal/follow"
)

// reader reads the audit log: a follow.Follower, or a follow.Replay for a
// replay of several files.
type reader interface {
	Run(ctx context.Context, h follow.Handler) error
	Stats() follow.Stats
}

var (
	_ reader = (*follow.Follower)(nil)
	_ reader = (*follow.Replay)(nil)
)

// newReader follows c.AuditLog, or, with Once and several --audit-log
// paths or a directory, replays every file they name in log order.
// lost says a checkpoint kept before is missing (see
// follow.Config.CheckpointLost).
func newReader(c Config, resume *follow.Position, lost bool, log *slog.Logger) (reader, error) {
	fi, err := os.Stat(c.AuditLog)
	dir := err == nil && fi.IsDir()
	if !c.Once || (len(c.MoreAuditLogs) == 0 && !dir) {
		if dir {
			return nil, errors.New("is a directory: a directory is replayed only with --once")
		}
		f, err := follow.New(follow.Config{Path: c.AuditLog, StartAt: c.StartAt, Resume: resume, CheckpointLost: lost, Once: c.Once, Logger: log})
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	if c.StateDir != "" {
		return nil, errors.New("a checkpoint follows one file: replay a directory or several files without --state-dir")
	}
	files, err := follow.ReplayFiles(append([]string{c.AuditLog}, c.MoreAuditLogs...))
	if err != nil {
		return nil, err
	}
	log.Info("replaying in log order", "files", files)
	r, err := follow.NewReplay(follow.Config{StartAt: c.StartAt, Logger: log}, files)
	if err != nil {
		return nil, err
	}
	return r, nil
}
