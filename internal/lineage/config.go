package lineage

import (
	"errors"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// Config is the lineage section of the aggregator's configuration. It is
// read at start.
type Config struct {
	// Enabled off: no lineage record, no chain override, an empty watch
	// set; stored entries are kept until they expire.
	Enabled bool `yaml:"enabled"`
	// DefaultTokenTTL is a token's lifetime when the TokenRequest body
	// (spec.expirationSeconds) was not logged.
	DefaultTokenTTL time.Duration `yaml:"default_token_ttl"`
	// MaxTokenTTL caps how long a token is watched.
	MaxTokenTTL time.Duration `yaml:"max_token_ttl"`
	// Lookback: uses read this long before a watch reached an agent are
	// still found; state is kept this long past a watch's end.
	Lookback time.Duration `yaml:"lookback"`
	// ActorWindow is how long a minter is followed after a mint.
	ActorWindow time.Duration `yaml:"actor_window"`
	// SummaryInterval is the length of the summary intervals (aligned to
	// multiples of it since the Unix epoch, on the aggregator's clock).
	SummaryInterval time.Duration `yaml:"summary_interval"`
	// MaxWatched bounds the tokens watched fleet-wide.
	MaxWatched int `yaml:"max_watched"`
}

// DefaultConfig returns the configuration file's defaults.
func DefaultConfig() Config {
	return Config{
		Enabled:         true,
		DefaultTokenTTL: time.Hour,
		MaxTokenTTL:     48 * time.Hour,
		Lookback:        2 * time.Minute,
		ActorWindow:     15 * time.Minute,
		SummaryInterval: 10 * time.Minute,
		MaxWatched:      100000,
	}
}

// Validate checks c as the configuration file's lineage section, naming
// each offending field by its key there; several problems are joined
// (errors.Join).
func (c Config) Validate() error {
	var errs []error
	if c.DefaultTokenTTL <= 0 {
		errs = append(errs, errors.New("lineage.default_token_ttl: must be > 0"))
	}
	if c.MaxTokenTTL <= 0 {
		errs = append(errs, errors.New("lineage.max_token_ttl: must be > 0"))
	}
	if c.Lookback < 0 {
		errs = append(errs, errors.New("lineage.lookback: must be >= 0"))
	}
	if c.ActorWindow < 0 {
		errs = append(errs, errors.New("lineage.actor_window: must be >= 0 (0 = minters are not followed)"))
	}
	if c.SummaryInterval <= 0 {
		errs = append(errs, errors.New("lineage.summary_interval: must be > 0"))
	}
	if c.MaxWatched < 1 {
		errs = append(errs, errors.New("lineage.max_watched: must be >= 1"))
	}
	return errors.Join(errs...)
}

// Token lifetimes TTL knows of.
const (
	// ExtendedExpirationSeconds is the expirationSeconds of a kubelet-style
	// request the apiserver may extend to ExtendedTTL
	// (--service-account-extend-token-expiration) while logging 3,607.
	ExtendedExpirationSeconds = 3607
	// ExtendedTTL is the lifetime of an extended token: a year.
	ExtendedTTL = 365 * 24 * time.Hour
)

// TTL returns until when a token e minted at mint is watched:
// mint + spec.expirationSeconds when logged (a year for 3,607, which the
// apiserver may have extended), else mint + DefaultTokenTTL, capped at
// mint + MaxTokenTTL. capped is true when the cap cut that lifetime.
func TTL(e *audit.Event, mint time.Time, cfg Config) (until time.Time, capped bool) {
	ttl := cfg.DefaultTokenTTL
	if e != nil && e.RequestObject != nil && e.RequestObject.Spec.ExpirationSeconds != nil {
		switch s := *e.RequestObject.Spec.ExpirationSeconds; {
		case s == ExtendedExpirationSeconds:
			ttl = ExtendedTTL
		case s > int64(cfg.MaxTokenTTL/time.Second):
			return mint.Add(cfg.MaxTokenTTL), true
		case s > 0:
			ttl = time.Duration(s) * time.Second
		}
	}
	if ttl > cfg.MaxTokenTTL {
		return mint.Add(cfg.MaxTokenTTL), true
	}
	return mint.Add(ttl), false
}
