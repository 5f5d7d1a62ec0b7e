package budget

import (
	"errors"
	"time"
)

// DefaultConfig returns the configuration file's defaults: off, with a
// 5-minute window once MaxAlerts is set.
func DefaultConfig() Config {
	return Config{MaxAlerts: 0, Window: 5 * time.Minute}
}

// Validate checks c as the configuration file's budget section, naming each
// offending field by its key there; several problems are joined
// (errors.Join).
func (c Config) Validate() error {
	var errs []error
	if c.MaxAlerts < 0 {
		errs = append(errs, errors.New("budget.max_alerts: must be >= 0 (0 = off)"))
	}
	if c.Window <= 0 {
		errs = append(errs, errors.New("budget.window: must be > 0"))
	}
	return errors.Join(errs...)
}
