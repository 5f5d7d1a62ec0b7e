package guard

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Config holds the limits. The zero value of a field means its default
// (DefaultConfig); Validate rejects negative values and impossible
// combinations. The yaml tags are the keys of the configuration file's
// limits section; fields tagged "-" are not in the file.
type Config struct {
	// MaxRecvMsgBytes bounds one received gRPC message (default 4 MiB; the
	// agent's batches are at most 1 MiB unless one event is larger).
	MaxRecvMsgBytes int `yaml:"max_message_bytes"`
	// MaxEventsPerBatch and MaxLossesPerBatch bound one Batch (defaults
	// 4096 and 1024; the agent sends at most 512 events per batch). A
	// batch's lineage uses and use counts count as events here and in the
	// event rate (BatchEvents).
	MaxEventsPerBatch int `yaml:"max_events_per_batch"`
	MaxLossesPerBatch int `yaml:"max_losses_per_batch"`

	// MaxStreams bounds the concurrent agent streams of the whole server
	// (default 1024); health watches have their own pool.
	MaxStreams int `yaml:"max_streams"`
	// MaxStreamsPerCluster bounds the concurrent agent streams that name one
	// cluster in their Hello, and those of one client certificate from the
	// moment they open, before any Hello (default 32: one per control-plane
	// node, plus replays and reconnects that overlap a dying stream). So one
	// certificate holds at most this many of MaxStreams.
	MaxStreamsPerCluster int `yaml:"max_streams_per_cluster"`
	// HelloTimeout is how long a new agent stream may take to send its
	// Hello before it is ended with DeadlineExceeded (default 5s; an agent
	// sends it at once).
	HelloTimeout time.Duration `yaml:"hello_timeout"`
	// MaxHealthWatches bounds the concurrent streams other than agent
	// streams (health watches), apart from MaxStreams (default 64), and
	// MaxHealthWatchesPerPeer those of one client certificate (default 4,
	// or MaxHealthWatches when that is lower).
	MaxHealthWatches        int `yaml:"max_health_watches"`
	MaxHealthWatchesPerPeer int `yaml:"-"`
	// MaxStreamsPerConn is HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (default
	// 8; an agent uses one stream per connection).
	MaxStreamsPerConn int `yaml:"max_streams_per_connection"`
	// MaxAgents bounds the cluster keys whose rate state is kept; idle keys
	// whose budget has refilled are forgotten first (default 10000).
	MaxAgents int `yaml:"-"`

	// EventsPerSecond and EventBurst are each cluster's token bucket for
	// events, shared by all its nodes' agents whatever node names they
	// claim (defaults 10000/s, burst 100000: five busy control-plane nodes
	// writing a few thousand audit events a second each, of which token
	// creates are a fraction; the burst covers reconnects' resends).
	EventsPerSecond float64 `yaml:"events_per_second"`
	EventBurst      int     `yaml:"event_burst"`
	// MessagesPerSecond and MessageBurst bound each cluster's stream
	// messages (batches, heartbeats, hellos) (defaults 1000/s, burst 5000).
	MessagesPerSecond float64 `yaml:"messages_per_second"`
	MessageBurst      int     `yaml:"message_burst"`
	// ReplayEventsPerSecond and ReplayEventBurst are the event bucket of
	// a cluster's replaying streams (Hello.replay: agent --once sends a
	// backlog as fast as it can), kept apart from its live streams (defaults
	// 20000/s, burst 100000).
	ReplayEventsPerSecond float64 `yaml:"replay_events_per_second"`
	ReplayEventBurst      int     `yaml:"replay_event_burst"`
	// MaxThrottle is how long a message may be held back to fit the rate
	// before the stream is cut off with ResourceExhausted instead (default
	// 5s). Holding back is backpressure: a real agent just batches more.
	// A negative value is invalid; use a tiny duration to refuse at once.
	MaxThrottle time.Duration `yaml:"max_throttle"`

	// KeepaliveMinTime is the shortest client ping interval tolerated;
	// faster pings get the connection closed with GOAWAY too_many_pings
	// (default 10s; agents must ping no more often).
	KeepaliveMinTime time.Duration `yaml:"keepalive_min_time"`
	// KeepaliveDenyWithoutStream refuses pings on connections without an
	// active stream (default false: pings are permitted, as agents between
	// streams may keep their connection warm).
	KeepaliveDenyWithoutStream bool `yaml:"-"`
	// KeepaliveTime and KeepaliveTimeout: the server pings an idle
	// connection after KeepaliveTime and closes it when no answer comes
	// within KeepaliveTimeout (defaults 30s and 10s), so dead peers free
	// their stream slots.
	KeepaliveTime    time.Duration `yaml:"-"`
	KeepaliveTimeout time.Duration `yaml:"-"`
	// HandshakeTimeout bounds the connection handshake, TLS included
	// (default 10s), against peers that connect and stall.
	HandshakeTimeout time.Duration `yaml:"-"`
	// MaxHeaderListBytes bounds the HTTP/2 header list (default 64 KiB).
	MaxHeaderListBytes uint32 `yaml:"-"`
	// WindowBytes fixes the HTTP/2 flow-control window of each stream and
	// connection, bounding the data a peer that is not being read can have
	// in flight to about WindowBytes per stream (DefaultConfig: 64 KiB); 0
	// keeps gRPC's windows, which grow with the measured bandwidth-delay
	// product up to 16 MiB per stream. Between 64 KiB and 1 GiB when set.
	WindowBytes int `yaml:"window_bytes"`

	// Logger receives the rejected TLS handshakes seen by Credentials, at
	// most once a minute per reason (nil: not logged; always counted).
	Logger *slog.Logger `yaml:"-"`
}

// defaultHealthWatchesPerPeer is MaxHealthWatchesPerPeer's default, lowered
// to MaxHealthWatches when that is lower.
const defaultHealthWatchesPerPeer = 4

// DefaultConfig returns the defaults, sized for real agents: a busy control
// plane writes a few thousand audit events a second, of which token creates
// are a fraction. MaxHealthWatchesPerPeer is left 0 (its default follows
// MaxHealthWatches).
func DefaultConfig() Config {
	return Config{
		MaxRecvMsgBytes:       4 << 20,
		MaxEventsPerBatch:     4096,
		MaxLossesPerBatch:     1024,
		MaxStreams:            1024,
		MaxStreamsPerCluster:  32,
		MaxStreamsPerConn:     8,
		HelloTimeout:          5 * time.Second,
		MaxHealthWatches:      64,
		MaxAgents:             10000,
		EventsPerSecond:       10000,
		EventBurst:            100000,
		MessagesPerSecond:     1000,
		MessageBurst:          5000,
		ReplayEventsPerSecond: 20000,
		ReplayEventBurst:      100000,
		MaxThrottle:           5 * time.Second,
		KeepaliveMinTime:      10 * time.Second,
		KeepaliveTime:         30 * time.Second,
		KeepaliveTimeout:      10 * time.Second,
		HandshakeTimeout:      10 * time.Second,
		MaxHeaderListBytes:    64 << 10,
		WindowBytes:           512 << 10,
	}
}

// Validate reports every negative or inconsistent field by name.
func (c Config) Validate() error {
	var errs []error
	neg := func(name string, v float64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("guard: %s must not be negative (0 means the default), got %v", name, v))
		}
	}
	neg("MaxRecvMsgBytes", float64(c.MaxRecvMsgBytes))
	neg("MaxEventsPerBatch", float64(c.MaxEventsPerBatch))
	neg("MaxLossesPerBatch", float64(c.MaxLossesPerBatch))
	neg("MaxStreams", float64(c.MaxStreams))
	neg("MaxStreamsPerCluster", float64(c.MaxStreamsPerCluster))
	neg("MaxStreamsPerConn", float64(c.MaxStreamsPerConn))
	neg("HelloTimeout", float64(c.HelloTimeout))
	neg("MaxHealthWatches", float64(c.MaxHealthWatches))
	neg("MaxHealthWatchesPerPeer", float64(c.MaxHealthWatchesPerPeer))
	neg("MaxAgents", float64(c.MaxAgents))
	neg("EventsPerSecond", c.EventsPerSecond)
	neg("EventBurst", float64(c.EventBurst))
	neg("MessagesPerSecond", c.MessagesPerSecond)
	neg("MessageBurst", float64(c.MessageBurst))
	neg("ReplayEventsPerSecond", c.ReplayEventsPerSecond)
	neg("ReplayEventBurst", float64(c.ReplayEventBurst))
	neg("MaxThrottle", float64(c.MaxThrottle))
	neg("KeepaliveMinTime", float64(c.KeepaliveMinTime))
	neg("KeepaliveTime", float64(c.KeepaliveTime))
	neg("KeepaliveTimeout", float64(c.KeepaliveTimeout))
	neg("HandshakeTimeout", float64(c.HandshakeTimeout))
	if int64(c.MaxStreamsPerConn) > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("guard: MaxStreamsPerConn must be at most %d, got %d", uint32(math.MaxUint32), c.MaxStreamsPerConn))
	}
	if c.WindowBytes != 0 && (c.WindowBytes < 64<<10 || c.WindowBytes > 1<<30) {
		errs = append(errs, fmt.Errorf("guard: WindowBytes must be 0 (gRPC's dynamic windows) or between 65536 and 1073741824, got %d", c.WindowBytes))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	d := c.withDefaults()
	if d.MaxStreamsPerCluster > d.MaxStreams {
		errs = append(errs, fmt.Errorf("guard: MaxStreamsPerCluster (%d) exceeds MaxStreams (%d)", d.MaxStreamsPerCluster, d.MaxStreams))
	}
	if d.MaxHealthWatchesPerPeer > d.MaxHealthWatches {
		errs = append(errs, fmt.Errorf("guard: MaxHealthWatchesPerPeer (%d) exceeds MaxHealthWatches (%d)", d.MaxHealthWatchesPerPeer, d.MaxHealthWatches))
	}
	if d.EventBurst < d.MaxEventsPerBatch {
		errs = append(errs, fmt.Errorf("guard: EventBurst (%d) is below MaxEventsPerBatch (%d): a full batch could never pass", d.EventBurst, d.MaxEventsPerBatch))
	}
	if d.ReplayEventBurst < d.MaxEventsPerBatch {
		errs = append(errs, fmt.Errorf("guard: ReplayEventBurst (%d) is below MaxEventsPerBatch (%d): a full batch could never pass", d.ReplayEventBurst, d.MaxEventsPerBatch))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero (and, defensively, negative) fields from
// DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	pick := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	pickf := func(v *float64, def float64) {
		if *v <= 0 {
			*v = def
		}
	}
	pickd := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	pick(&c.MaxRecvMsgBytes, d.MaxRecvMsgBytes)
	pick(&c.MaxEventsPerBatch, d.MaxEventsPerBatch)
	pick(&c.MaxLossesPerBatch, d.MaxLossesPerBatch)
	pick(&c.MaxStreams, d.MaxStreams)
	pick(&c.MaxStreamsPerCluster, d.MaxStreamsPerCluster)
	pick(&c.MaxHealthWatches, d.MaxHealthWatches)
	pick(&c.MaxHealthWatchesPerPeer, min(defaultHealthWatchesPerPeer, c.MaxHealthWatches))
	pickd(&c.HelloTimeout, d.HelloTimeout)
	pick(&c.MaxAgents, d.MaxAgents)
	pick(&c.EventBurst, d.EventBurst)
	pick(&c.MessageBurst, d.MessageBurst)
	pickf(&c.EventsPerSecond, d.EventsPerSecond)
	pickf(&c.MessagesPerSecond, d.MessagesPerSecond)
	pick(&c.ReplayEventBurst, d.ReplayEventBurst)
	pickf(&c.ReplayEventsPerSecond, d.ReplayEventsPerSecond)
	pickd(&c.MaxThrottle, d.MaxThrottle)
	pickd(&c.KeepaliveMinTime, d.KeepaliveMinTime)
	pickd(&c.KeepaliveTime, d.KeepaliveTime)
	pickd(&c.KeepaliveTimeout, d.KeepaliveTimeout)
	pickd(&c.HandshakeTimeout, d.HandshakeTimeout)
	pick(&c.MaxStreamsPerConn, d.MaxStreamsPerConn)
	if c.MaxHeaderListBytes == 0 {
		c.MaxHeaderListBytes = d.MaxHeaderListBytes
	}
	return c
}
