package silence

import (
	"errors"
	"fmt"
	"maps"
	"sort"
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

// Equal reports whether c and o are the same configuration.
func (c Config) Equal(o Config) bool {
	return c.After == o.After && c.MaxNodesPerCluster == o.MaxNodesPerCluster && c.ForgetAfter == o.ForgetAfter &&
		c.TokenRequestsAfter == o.TokenRequestsAfter && maps.Equal(c.ExpectedNodes, o.ExpectedNodes)
}

// Validate checks c as the configuration file's silence section, naming each
// offending field by its key there; several problems are joined
// (errors.Join). MaxNodesPerCluster is the limits section's to check; an
// expected node count above it (when set) is refused.
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
	clusters := make([]string, 0, len(c.ExpectedNodes))
	for name := range c.ExpectedNodes {
		clusters = append(clusters, name)
	}
	sort.Strings(clusters)
	for _, name := range clusters {
		switch n := c.ExpectedNodes[name]; {
		case name == "":
			errs = append(errs, errors.New("silence.expected_nodes: a cluster name must not be empty"))
		case n < 1:
			errs = append(errs, fmt.Errorf("silence.expected_nodes.%s: must be >= 1, got %d", name, n))
		case c.MaxNodesPerCluster > 0 && n > c.MaxNodesPerCluster:
			errs = append(errs, fmt.Errorf("silence.expected_nodes.%s: %d exceeds limits.max_nodes_per_cluster (%d)", name, n, c.MaxNodesPerCluster))
		}
	}
	return errors.Join(errs...)
}
