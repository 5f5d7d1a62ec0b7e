package server

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/state"
)

// ErrCorruptState is matched (errors.Is) by Run's error when the state file
// is corrupt and --state-reset-corrupt was not given; main exits 2 then,
// as for a bad flag: restarting does not help, the operator has to act.
var ErrCorruptState = state.ErrCorrupt

// openState opens the durable state. A corrupt file stops the start with
// one line saying what to do, unless c.StateResetCorrupt: then the file is
// moved aside (kept for inspection) and an empty store starts, logged as
// an error that says what was discarded.
func openState(c Config, logger *slog.Logger) (*state.Store, error) {
	store, err := state.OpenDir(c.StateDir, state.Options{Now: c.Now})
	if err == nil {
		return store, nil
	}
	if !errors.Is(err, state.ErrCorrupt) {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	if !c.StateResetCorrupt {
		return nil, fmt.Errorf("--state-dir: %w: restore the file from a backup, or start once with --state-reset-corrupt "+
			"to move it aside and start empty, discarding the alerts in it not yet exported and its dedupe record "+
			"(requests agents re-send may alert again)", err)
	}
	path := filepath.Join(c.StateDir, state.FileName)
	moved, merr := state.MoveAside(path, c.Now())
	if merr != nil {
		return nil, fmt.Errorf("--state-reset-corrupt: %w (the state was: %v)", merr, err)
	}
	logger.Error("state file corrupt: moved aside, starting with EMPTY state; DISCARDED: the alerts in it not yet exported "+
		"(they will not be exported) and its dedupe record (requests agents re-send may alert again)",
		"reason", err.Error(), "moved_to", moved)
	store, err = state.OpenDir(c.StateDir, state.Options{Now: c.Now})
	if err != nil {
		return nil, fmt.Errorf("--state-dir: after moving the corrupt file aside: %w", err)
	}
	return store, nil
}
