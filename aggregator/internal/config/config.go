package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Platforms accepted by exclusions.platform.
const (
	PlatformSelfManaged = "self-managed"
	PlatformAny         = "any"
)

// Config is the aggregator's configuration file.
type Config struct {
	Exclusions  Exclusions  `yaml:"exclusions"`
	Alerting    Alerting    `yaml:"alerting"`
	Correlation Correlation `yaml:"correlation"`
	Budget      Budget      `yaml:"budget"`
	Silence     Silence     `yaml:"silence"`
	Limits      Limits      `yaml:"limits"`
}

// Exclusions tunes which identities do not alert.
type Exclusions struct {
	// StrictGroups requires the matching group for system:node:* and
	// system:serviceaccount:<ns>:* exclusions.
	StrictGroups bool `yaml:"strict_groups"`
	// Platform is self-managed (managed-cloud identities not excluded) or any.
	Platform string `yaml:"platform"`
	// ReplaceDefaults drops the seed list; only Add remains.
	ReplaceDefaults bool `yaml:"replace_defaults"`
	// Add lists extra exclusions.
	Add []Pattern `yaml:"add"`
}

// Pattern is one added exclusion: a user pattern, optionally narrowed to
// target service-account namespaces and names. Patterns are exact and
// case-sensitive; '*' matches any run of characters.
type Pattern struct {
	User            string   `yaml:"user"`
	Namespaces      []string `yaml:"namespaces"`
	ServiceAccounts []string `yaml:"service_accounts"`
}

// Alerting tunes how token requests become alerts.
type Alerting struct {
	// StageGrace is how long a RequestReceived waits for its completion.
	StageGrace time.Duration `yaml:"stage_grace"`
	// DedupeRetention is how long a request is remembered as alerted.
	DedupeRetention time.Duration `yaml:"dedupe_retention"`
}

// Correlation tunes the cross-cluster correlation.
type Correlation struct {
	Window          time.Duration `yaml:"window"`
	Lateness        time.Duration `yaml:"lateness"`
	Clusters        int           `yaml:"clusters"`
	ServiceAccounts int           `yaml:"service_accounts"`
	IgnoreUsers     []string      `yaml:"ignore_users"`
}

// Budget caps base alerts per window, fleet-wide. MaxAlerts 0 is off.
type Budget struct {
	MaxAlerts int           `yaml:"max_alerts"`
	Window    time.Duration `yaml:"window"`
}

// Silence tunes the silent-cluster detection.
type Silence struct {
	After time.Duration `yaml:"after"`
	// ForgetAfter is how long a node stays tracked after it went silent
	// without heartbeat (its cluster_silent): then it is forgotten, and a
	// return is a new node.
	ForgetAfter time.Duration `yaml:"forget_after"`
}

// Limits bounds what agents may send: sizes, concurrent streams and
// per-agent rates. They are read at start: a reload that changes them is
// logged and takes effect at the next restart (the gRPC server's options
// cannot change while it serves).
type Limits struct {
	// MaxMessageBytes bounds one received gRPC message.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxEventsPerBatch and MaxLossesPerBatch bound one batch.
	MaxEventsPerBatch int `yaml:"max_events_per_batch"`
	MaxLossesPerBatch int `yaml:"max_losses_per_batch"`
	// MaxStreams bounds the server's concurrent agent streams,
	// MaxStreamsPerCluster those naming one cluster and those of one client
	// certificate (counted from the stream's start, before its Hello),
	// MaxStreamsPerConnection those on one HTTP/2 connection.
	MaxStreams              int `yaml:"max_streams"`
	MaxStreamsPerCluster    int `yaml:"max_streams_per_cluster"`
	MaxStreamsPerConnection int `yaml:"max_streams_per_connection"`
	// HelloTimeout is how long a new agent stream may take to send its
	// Hello before it is ended (DEADLINE_EXCEEDED).
	HelloTimeout time.Duration `yaml:"hello_timeout"`
	// MaxHealthWatches bounds the concurrent gRPC health Watch streams,
	// apart from agent streams (one client certificate: at most 4 of them).
	MaxHealthWatches int `yaml:"max_health_watches"`
	// MaxNodesPerCluster bounds the node names one cluster's live agents
	// may use (nodes tracked for silence): a stream naming a new node
	// beyond it is refused and reported (a nodes_refused record).
	MaxNodesPerCluster int `yaml:"max_nodes_per_cluster"`
	// EventsPerSecond and EventBurst are each cluster's event token bucket,
	// shared by its nodes' agents; MessagesPerSecond and MessageBurst its
	// message bucket.
	EventsPerSecond   float64 `yaml:"events_per_second"`
	EventBurst        int     `yaml:"event_burst"`
	MessagesPerSecond float64 `yaml:"messages_per_second"`
	MessageBurst      int     `yaml:"message_burst"`
	// ReplayEventsPerSecond and ReplayEventBurst replace the event bucket
	// for replaying streams (Hello.replay, agent --once), which send a
	// backlog as fast as they can; a replay has its own bucket, apart from
	// the live agent of the same node.
	ReplayEventsPerSecond float64 `yaml:"replay_events_per_second"`
	ReplayEventBurst      int     `yaml:"replay_event_burst"`
	// MaxThrottle is how long a message may be held back to fit the rates
	// before the stream is cut off with ResourceExhausted.
	MaxThrottle time.Duration `yaml:"max_throttle"`
	// KeepaliveMinTime is the shortest client ping interval tolerated.
	KeepaliveMinTime time.Duration `yaml:"keepalive_min_time"`
	// WindowBytes fixes each stream's and connection's HTTP/2 flow-control
	// windows, bounding what an agent that is not being read can have in
	// flight to about this much (default 64 KiB: one stream's throughput
	// did not drop against gRPC's dynamic windows, which grow to 16 MiB per
	// stream); 0 keeps gRPC's dynamic windows.
	WindowBytes int `yaml:"window_bytes"`
	// MaxBufferedBytes bounds the received agent data all streams hold
	// together (messages being read, screened batches waiting for their
	// commit), beyond a 64 KiB share each stream always has; a stream over
	// the budget stops reading, which holds back its agent only. One
	// cluster holds at most a quarter of it.
	MaxBufferedBytes int `yaml:"max_buffered_bytes"`
}

// DefaultLimits returns the limits' defaults, sized for real agents: a busy
// control plane writes a few thousand audit events a second, of which token
// creates are a fraction.
func DefaultLimits() Limits {
	return Limits{
		MaxMessageBytes:         4 << 20,
		MaxEventsPerBatch:       4096,
		MaxLossesPerBatch:       1024,
		MaxStreams:              1024,
		MaxStreamsPerCluster:    32,
		MaxStreamsPerConnection: 8,
		HelloTimeout:            5 * time.Second,
		MaxHealthWatches:        64,
		MaxNodesPerCluster:      16,
		EventsPerSecond:         10000,
		EventBurst:              100000,
		MessagesPerSecond:       1000,
		MessageBurst:            5000,
		ReplayEventsPerSecond:   20000,
		ReplayEventBurst:        100000,
		MaxThrottle:             5 * time.Second,
		KeepaliveMinTime:        10 * time.Second,
		WindowBytes:             64 << 10,
		MaxBufferedBytes:        64 << 20,
	}
}

// Default returns the contract's defaults.
func Default() Config {
	return Config{
		Exclusions: Exclusions{
			StrictGroups: true,
			Platform:     PlatformSelfManaged,
		},
		Alerting: Alerting{
			StageGrace:      2 * time.Second,
			DedupeRetention: 24 * time.Hour,
		},
		Correlation: Correlation{
			Window:          10 * time.Minute,
			Lateness:        5 * time.Minute,
			Clusters:        2,
			ServiceAccounts: 5,
		},
		Budget: Budget{
			MaxAlerts: 0,
			Window:    5 * time.Minute,
		},
		Silence: Silence{
			After:       5 * time.Minute,
			ForgetAfter: 24 * time.Hour,
		},
		Limits: DefaultLimits(),
	}
}

// Parse decodes a configuration file over the defaults and validates it.
// Keys that are absent keep their default; unknown keys are errors; an empty
// file gives the defaults.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("decode: %s", oneLine(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("decode: more than one YAML document")
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Load reads and parses the file at path.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err // an *fs.PathError: it names the operation and the file
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Validate reports every invalid field on one line, each naming its field.
func (c Config) Validate() error {
	var errs []string
	bad := func(field, format string, args ...any) {
		errs = append(errs, field+": "+fmt.Sprintf(format, args...))
	}
	switch c.Exclusions.Platform {
	case PlatformSelfManaged, PlatformAny:
	default:
		bad("exclusions.platform", "must be %q or %q, got %q", PlatformSelfManaged, PlatformAny, c.Exclusions.Platform)
	}
	for i, p := range c.Exclusions.Add {
		field := fmt.Sprintf("exclusions.add[%d]", i)
		if p.User == "" {
			bad(field+".user", "must not be empty")
		}
		for j, ns := range p.Namespaces {
			if ns == "" {
				bad(fmt.Sprintf("%s.namespaces[%d]", field, j), "must not be empty")
			}
		}
		for j, sa := range p.ServiceAccounts {
			if sa == "" {
				bad(fmt.Sprintf("%s.service_accounts[%d]", field, j), "must not be empty")
			}
		}
	}
	if c.Alerting.StageGrace <= 0 {
		bad("alerting.stage_grace", "must be > 0")
	}
	if c.Alerting.DedupeRetention <= 0 {
		bad("alerting.dedupe_retention", "must be > 0")
	} else if c.Alerting.DedupeRetention < c.Alerting.StageGrace {
		bad("alerting.dedupe_retention", "must be >= alerting.stage_grace (%s)", c.Alerting.StageGrace)
	}
	if c.Correlation.Window <= 0 {
		bad("correlation.window", "must be > 0")
	}
	if c.Correlation.Lateness < 0 {
		bad("correlation.lateness", "must be >= 0")
	}
	if c.Correlation.Clusters < 2 {
		bad("correlation.clusters", "must be >= 2")
	}
	if c.Correlation.ServiceAccounts < 1 {
		bad("correlation.service_accounts", "must be >= 1")
	}
	for i, u := range c.Correlation.IgnoreUsers {
		if u == "" {
			bad(fmt.Sprintf("correlation.ignore_users[%d]", i), "must not be empty")
		}
	}
	if c.Budget.MaxAlerts < 0 {
		bad("budget.max_alerts", "must be >= 0 (0 = off)")
	}
	if c.Budget.Window <= 0 {
		bad("budget.window", "must be > 0")
	}
	if c.Silence.After <= 0 {
		bad("silence.after", "must be > 0")
	}
	if c.Silence.ForgetAfter <= 0 {
		bad("silence.forget_after", "must be > 0")
	}
	errs = append(errs, c.Limits.problems()...)
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// problems names every invalid limit, one string each.
func (l Limits) problems() []string {
	var errs []string
	bad := func(field, format string, args ...any) {
		errs = append(errs, "limits."+field+": "+fmt.Sprintf(format, args...))
	}
	positive := func(field string, v float64) bool {
		if v <= 0 {
			bad(field, "must be > 0")
			return false
		}
		return true
	}
	positive("max_message_bytes", float64(l.MaxMessageBytes))
	okBatch := positive("max_events_per_batch", float64(l.MaxEventsPerBatch))
	positive("max_losses_per_batch", float64(l.MaxLossesPerBatch))
	okStreams := positive("max_streams", float64(l.MaxStreams))
	if positive("max_streams_per_cluster", float64(l.MaxStreamsPerCluster)) && okStreams && l.MaxStreamsPerCluster > l.MaxStreams {
		bad("max_streams_per_cluster", "must be <= limits.max_streams (%d)", l.MaxStreams)
	}
	if positive("max_streams_per_connection", float64(l.MaxStreamsPerConnection)) && l.MaxStreamsPerConnection > 1<<20 {
		bad("max_streams_per_connection", "must be <= %d", 1<<20)
	}
	positive("hello_timeout", float64(l.HelloTimeout))
	positive("max_nodes_per_cluster", float64(l.MaxNodesPerCluster))
	if positive("max_health_watches", float64(l.MaxHealthWatches)) && l.MaxHealthWatches > 1<<20 {
		bad("max_health_watches", "must be <= %d", 1<<20)
	}
	positive("events_per_second", l.EventsPerSecond)
	if positive("event_burst", float64(l.EventBurst)) && okBatch && l.EventBurst < l.MaxEventsPerBatch {
		bad("event_burst", "must be >= limits.max_events_per_batch (%d): a full batch could never pass", l.MaxEventsPerBatch)
	}
	positive("messages_per_second", l.MessagesPerSecond)
	positive("message_burst", float64(l.MessageBurst))
	positive("replay_events_per_second", l.ReplayEventsPerSecond)
	if positive("replay_event_burst", float64(l.ReplayEventBurst)) && okBatch && l.ReplayEventBurst < l.MaxEventsPerBatch {
		bad("replay_event_burst", "must be >= limits.max_events_per_batch (%d): a full batch could never pass", l.MaxEventsPerBatch)
	}
	positive("max_throttle", float64(l.MaxThrottle))
	positive("keepalive_min_time", float64(l.KeepaliveMinTime))
	if l.WindowBytes != 0 && (l.WindowBytes < 64<<10 || l.WindowBytes > 1<<30) {
		bad("window_bytes", "must be 0 (gRPC's dynamic windows) or between 65536 and 1073741824")
	}
	// A cluster's quarter of the budget must hold two messages of the
	// largest size (a batch decodes to about twice its encoded size).
	if l.MaxMessageBytes > 0 && l.MaxBufferedBytes < 8*l.MaxMessageBytes {
		bad("max_buffered_bytes", "must be >= 8 x limits.max_message_bytes (%d)", 8*l.MaxMessageBytes)
	}
	return errs
}

// oneLine folds a multi-line yaml error into one line.
func oneLine(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	s = strings.ReplaceAll(s, "unmarshal errors:\n", "")
	fields := strings.Split(s, "\n")
	for i := range fields {
		fields[i] = strings.TrimSpace(fields[i])
	}
	return strings.Join(fields, "; ")
}
