package agent

import (
	"github.com/tokenwatch/tokenwatch/agent/internal/checkpoint"
	"github.com/tokenwatch/tokenwatch/internal/follow"
)

// checkpoints keeps the acknowledged position across restarts;
// *checkpoint.Store is one. Tests wrap it to record every save.
type checkpoints interface {
	LoadStarts() (*follow.Position, checkpoint.Starts, error)
	SaveStarts(follow.Position, checkpoint.Starts) error
}

// openCheckpoints opens the checkpoint store in dir.
func openCheckpoints(dir string) (checkpoints, error) { return checkpoint.Open(dir) }
