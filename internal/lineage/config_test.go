package lineage

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // substring; "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"disabled is valid", func(c *Config) { c.Enabled = false }, ""},
		{"zero lookback", func(c *Config) { c.Lookback = 0 }, ""},
		{"zero actor window", func(c *Config) { c.ActorWindow = 0 }, ""},
		{"default ttl", func(c *Config) { c.DefaultTokenTTL = 0 }, "lineage.default_token_ttl: must be > 0"},
		{"max ttl", func(c *Config) { c.MaxTokenTTL = -time.Second }, "lineage.max_token_ttl: must be > 0"},
		{"lookback", func(c *Config) { c.Lookback = -1 }, "lineage.lookback: must be >= 0"},
		{"actor window", func(c *Config) { c.ActorWindow = -1 }, "lineage.actor_window: must be >= 0"},
		{"summary interval", func(c *Config) { c.SummaryInterval = 0 }, "lineage.summary_interval: must be > 0"},
		{"max watched", func(c *Config) { c.MaxWatched = 0 }, "lineage.max_watched: must be >= 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.edit(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
	c := Config{}
	if err := c.Validate(); err == nil || strings.Count(err.Error(), "lineage.") != 4 {
		t.Errorf("Validate(zero) = %v, want four problems joined", err)
	}
}

func TestDefaultConfig(t *testing.T) {
	want := Config{Enabled: true, DefaultTokenTTL: time.Hour, MaxTokenTTL: 48 * time.Hour, Lookback: 2 * time.Minute,
		ActorWindow: 15 * time.Minute, SummaryInterval: 10 * time.Minute, MaxWatched: 100000}
	if got := DefaultConfig(); got != want {
		t.Errorf("DefaultConfig() = %+v, want %+v", got, want)
	}
}

func TestTTL(t *testing.T) {
	secs := func(s int64) *audit.Event {
		return &audit.Event{RequestObject: &audit.TokenRequest{Spec: audit.TokenRequestSpec{ExpirationSeconds: &s}}}
	}
	cfg := DefaultConfig()
	small := cfg
	small.MaxTokenTTL = 30 * time.Minute
	tests := []struct {
		name   string
		cfg    Config
		give   *audit.Event
		want   time.Duration
		capped bool
	}{
		{"no body: default", cfg, &audit.Event{}, time.Hour, false},
		{"nil event: default", cfg, nil, time.Hour, false},
		{"body without expiration: default", cfg, &audit.Event{RequestObject: &audit.TokenRequest{}}, time.Hour, false},
		{"logged 10m", cfg, secs(600), 10 * time.Minute, false},
		{"logged 2h", cfg, secs(7200), 2 * time.Hour, false},
		{"3607 may be a year: capped", cfg, secs(3607), 48 * time.Hour, true},
		{"3606 is its own", cfg, secs(3606), 3606 * time.Second, false},
		{"3608 is its own", cfg, secs(3608), 3608 * time.Second, false},
		{"exactly max", cfg, secs(48 * 3600), 48 * time.Hour, false},
		{"one second over max", cfg, secs(48*3600 + 1), 48 * time.Hour, true},
		{"a year", cfg, secs(365 * 24 * 3600), 48 * time.Hour, true},
		{"huge does not overflow", cfg, secs(1 << 62), 48 * time.Hour, true},
		{"zero: default", cfg, secs(0), time.Hour, false},
		{"negative: default", cfg, secs(-5), time.Hour, false},
		{"default over max: capped", small, &audit.Event{}, 30 * time.Minute, true},
		{"logged under small max", small, secs(600), 10 * time.Minute, false},
		{"3607 under a max over a year", Config{DefaultTokenTTL: time.Hour, MaxTokenTTL: 2 * ExtendedTTL}, secs(3607), ExtendedTTL, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			until, capped := TTL(tt.give, t0, tt.cfg)
			if got := until.Sub(t0); got != tt.want || capped != tt.capped {
				t.Errorf("TTL() = %v, %v, want %v, %v", got, capped, tt.want, tt.capped)
			}
		})
	}
}

func TestIntervalStart(t *testing.T) {
	tests := []struct {
		give time.Time
		iv   time.Duration
		want time.Time
	}{
		{time.Unix(0, 0), 10 * time.Minute, time.Unix(0, 0)},
		{time.Unix(599, 0), 10 * time.Minute, time.Unix(0, 0)},
		{time.Unix(600, 0), 10 * time.Minute, time.Unix(600, 0)},
		{time.Unix(7*60*1000+1, 0), 7 * time.Minute, time.Unix(7*60*1000, 0)},
		{time.Unix(-1, 0), 10 * time.Minute, time.Unix(-600, 0)},
		{at(3), 10 * time.Minute, at(0)},
	}
	for _, tt := range tests {
		if got := intervalStart(tt.give, tt.iv); !got.Equal(tt.want) {
			t.Errorf("intervalStart(%v, %v) = %v, want %v", tt.give, tt.iv, got, tt.want)
		}
	}
}
