package state

import (
	"context"
	"log/slog"
	"time"
)

// RunPrune calls Prune every interval with the retention that retention()
// returns at that moment (so a reloaded configuration applies), until ctx
// ends. A failed prune is logged and retried at the next tick; Prune only
// forgets, so nothing is lost by waiting.
func (s *Store) RunPrune(ctx context.Context, interval time.Duration, retention func() time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.Prune(s.now(), retention())
		if err != nil {
			log.Warn("prune dedupe record", "err", err)
			continue
		}
		if n > 0 {
			log.Debug("pruned dedupe record", "entries", n)
		}
	}
}
