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

	"github.com/tokenwatch/tokenwatch/aggregator/internal/guard"
	"github.com/tokenwatch/tokenwatch/internal/budget"
	"github.com/tokenwatch/tokenwatch/internal/correlate"
	"github.com/tokenwatch/tokenwatch/internal/lineage"
	"github.com/tokenwatch/tokenwatch/internal/rule"
	"github.com/tokenwatch/tokenwatch/internal/silence"
)

// Config is the aggregator's configuration file. Each section is the
// configuration of the component it tunes, with that component's yaml tags,
// defaults and Validate; only alerting and the limits beyond the gRPC
// server's belong to the file itself.
type Config struct {
	Exclusions  rule.Config      `yaml:"exclusions"`
	Alerting    Alerting         `yaml:"alerting"`
	Correlation correlate.Config `yaml:"correlation"`
	Budget      budget.Config    `yaml:"budget"`
	Silence     silence.Config   `yaml:"silence"`
	Limits      Limits           `yaml:"limits"`
	// Lineage is read at start, as Limits are: a reload that changes it is
	// logged and takes effect at the next restart.
	Lineage lineage.Config `yaml:"lineage"`
}

// Alerting tunes how token requests become alerts.
type Alerting struct {
	// StageGrace is how long a RequestReceived waits for its completion.
	StageGrace time.Duration `yaml:"stage_grace"`
	// DedupeRetention is how long a request is remembered as alerted.
	DedupeRetention time.Duration `yaml:"dedupe_retention"`
}

// DefaultAlerting returns the alerting section's defaults.
func DefaultAlerting() Alerting {
	return Alerting{StageGrace: 2 * time.Second, DedupeRetention: 24 * time.Hour}
}

// Validate names every invalid alerting field (errors.Join).
func (a Alerting) Validate() error {
	var errs []error
	if a.StageGrace <= 0 {
		errs = append(errs, errors.New("alerting.stage_grace: must be > 0"))
	}
	if a.DedupeRetention <= 0 {
		errs = append(errs, errors.New("alerting.dedupe_retention: must be > 0"))
	} else if a.DedupeRetention < a.StageGrace {
		errs = append(errs, fmt.Errorf("alerting.dedupe_retention: must be >= alerting.stage_grace (%s)", a.StageGrace))
	}
	return errors.Join(errs...)
}

// Limits bounds what agents may send: sizes, concurrent streams and
// per-agent rates. Its keys are the gRPC server's guard.Config (inlined:
// its fields tagged "-" are not in the file) plus the node bound of silence
// detection and the buffer budget of ingest. They are read at start: a
// reload that changes them is logged and takes effect at the next restart
// (the gRPC server's options cannot change while it serves).
type Limits struct {
	guard.Config `yaml:",inline"`
	// MaxNodesPerCluster bounds the node names one cluster's live agents
	// may use (nodes tracked for silence): a stream naming a new node
	// beyond it is refused and reported (a nodes_refused record).
	MaxNodesPerCluster int `yaml:"max_nodes_per_cluster"`
	// MaxBufferedBytes bounds the received agent data all streams hold
	// together (messages being read, screened batches waiting for their
	// commit), beyond a 64 KiB share each stream always has; a stream over
	// the budget stops reading, which holds back its agent only. One
	// cluster holds at most a quarter of it.
	MaxBufferedBytes int `yaml:"max_buffered_bytes"`
}

// DefaultLimits returns the limits' defaults: guard.DefaultConfig, 16 nodes
// per cluster and 64 MiB of buffered agent data.
func DefaultLimits() Limits {
	return Limits{Config: guard.DefaultConfig(), MaxNodesPerCluster: 16, MaxBufferedBytes: 64 << 20}
}

// Default returns the contract's defaults: each component's own.
func Default() Config {
	return Config{
		Exclusions:  rule.DefaultConfig(),
		Alerting:    DefaultAlerting(),
		Correlation: correlate.DefaultConfig(),
		Budget:      budget.DefaultConfig(),
		Silence:     silence.DefaultConfig(),
		Limits:      DefaultLimits(),
		Lineage:     lineage.DefaultConfig(),
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

// Validate reports every invalid field on one line, each naming its field:
// each section's Validate in turn.
func (c Config) Validate() error {
	var errs []string
	for _, err := range []error{
		c.Exclusions.Validate(), c.Alerting.Validate(), c.Correlation.Validate(),
		c.Budget.Validate(), c.silence().Validate(), c.Limits.Validate(), c.Lineage.Validate(),
	} {
		errs = appendErrors(errs, err)
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// silence is the silence section with the node bound of the limits
// section, as silence detection runs with it.
func (c Config) silence() silence.Config {
	sc := c.Silence
	sc.MaxNodesPerCluster = c.Limits.MaxNodesPerCluster
	return sc
}

// appendErrors appends err's message to errs, each error of a join apart.
func appendErrors(errs []string, err error) []string {
	if err == nil {
		return errs
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			errs = appendErrors(errs, e)
		}
		return errs
	}
	return append(errs, err.Error())
}

// Validate names every invalid limit (errors.Join). In the file every limit
// is set (an absent key keeps its default), so zero is invalid here, where
// guard.Config.Validate takes it for the default.
func (l Limits) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("limits."+field+": "+format, args...))
	}
	positive := func(field string, v float64) bool {
		if v <= 0 {
			bad(field, "must be > 0")
			return false
		}
		return true
	}
	positive("max_message_bytes", float64(l.MaxRecvMsgBytes))
	okBatch := positive("max_events_per_batch", float64(l.MaxEventsPerBatch))
	positive("max_losses_per_batch", float64(l.MaxLossesPerBatch))
	okStreams := positive("max_streams", float64(l.MaxStreams))
	if positive("max_streams_per_cluster", float64(l.MaxStreamsPerCluster)) && okStreams && l.MaxStreamsPerCluster > l.MaxStreams {
		bad("max_streams_per_cluster", "must be <= limits.max_streams (%d)", l.MaxStreams)
	}
	if positive("max_streams_per_connection", float64(l.MaxStreamsPerConn)) && l.MaxStreamsPerConn > 1<<20 {
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
	if l.MaxRecvMsgBytes > 0 && l.MaxBufferedBytes < 8*l.MaxRecvMsgBytes {
		bad("max_buffered_bytes", "must be >= 8 x limits.max_message_bytes (%d)", 8*l.MaxRecvMsgBytes)
	}
	return errors.Join(errs...)
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
