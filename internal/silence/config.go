package silence

import (
	"errors"
	"time"
)

// DefaultConfig returns the configuration file's silence defaults: silent
// after 5 minutes, forgotten a day later, and a cluster without token
// requests for 3 hours (a kubelet renews each pod's projected token about
// every 48 minutes, so any cluster running pods logs several an hour).
// MaxNodesPerCluster is 0 here: the file sets it in its limits section.
func DefaultConfig() Config {
	return Config{After: 5 * time.Minute, ForgetAfter: 24 * time.Hour, TokenRequestsAfter: 3 * time.Hour}
}

// Validate checks c as the configuration file's silence section, naming each
// offending field by its key there; several problems are joined
// (errors.Join). MaxNodesPerCluster is the limits section's to check.
func (c Config) Validate() error {
	var errs []error
	if c.After <= 0 {
		errs = append(errs, errors.New("silence.after: must be > 0"))
	}
	if c.ForgetAfter <= 0 {
		errs = append(errs, errors.New("silence.forget_after: must be > 0"))
	}
	if c.TokenRequestsAfter < 0 {
		errs = append(errs, errors.New("silence.token_requests_after: must be >= 0 (0 turns the check off)"))
	}
	return errors.Join(errs...)
}
