package correlate

import (
	"errors"
	"fmt"
	"time"
)

// DefaultConfig returns the configuration file's defaults: a 10-minute
// window, 5 minutes of lateness, two clusters and five service accounts.
func DefaultConfig() Config {
	return Config{
		Window:          10 * time.Minute,
		Lateness:        5 * time.Minute,
		Clusters:        2,
		ServiceAccounts: 5,
	}
}

// Validate checks c as the configuration file's correlation section, naming
// each offending field by its key there; several problems are joined
// (errors.Join). New accepts more (a threshold <= 0 turns its kinds off).
func (c Config) Validate() error {
	var errs []error
	if c.Window <= 0 {
		errs = append(errs, errors.New("correlation.window: must be > 0"))
	}
	if c.Lateness < 0 {
		errs = append(errs, errors.New("correlation.lateness: must be >= 0"))
	}
	if c.Clusters < 2 {
		errs = append(errs, errors.New("correlation.clusters: must be >= 2"))
	}
	if c.ServiceAccounts < 1 {
		errs = append(errs, errors.New("correlation.service_accounts: must be >= 1"))
	}
	for i, u := range c.IgnoreUsers {
		if u == "" {
			errs = append(errs, fmt.Errorf("correlation.ignore_users[%d]: must not be empty", i))
		}
	}
	return errors.Join(errs...)
}

// Equal reports whether c and o configure the same correlation.
func (c Config) Equal(o Config) bool {
	if c.Window != o.Window || c.Lateness != o.Lateness || c.Clusters != o.Clusters ||
		c.ServiceAccounts != o.ServiceAccounts || len(c.IgnoreUsers) != len(o.IgnoreUsers) {
		return false
	}
	for i := range c.IgnoreUsers {
		if c.IgnoreUsers[i] != o.IgnoreUsers[i] {
			return false
		}
	}
	return true
}
