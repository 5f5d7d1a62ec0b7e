package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
	"github.com/tokenwatch/tokenwatch/internal/wire"
)

// Defaults of the agent's flags.
const (
	DefaultAuditLog    = "/var/log/kubernetes/audit/audit.log"
	DefaultStateDir    = "/var/lib/tokenwatch"
	DefaultOnceTimeout = 5 * time.Minute
)

// Config is everything the agent needs; main fills it from flags. Errors
// from Validate name the flag.
type Config struct {
	AuditLog   string // --audit-log
	Cluster    string // --cluster
	NodeName   string // --node-name
	Aggregator string // --aggregator HOST:PORT
	Insecure   bool   // --insecure
	TLSCert    string // --tls-cert
	TLSKey     string // --tls-key
	TLSCA      string // --tls-ca
	// StateDir holds the checkpoint; empty keeps none (--once without
	// --state-dir).
	StateDir    string
	StartAt     string        // --start-at: beginning | end
	Once        bool          // --once
	OnceTimeout time.Duration // --once-timeout
	MetricsAddr string        // --metrics-addr; empty serves none
	// AuditPolicyFile is the kube-apiserver's audit policy file
	// (--audit-policy-file; empty: not watched): its digest goes with each
	// heartbeat, so that the aggregator reports a change.
	AuditPolicyFile string

	// MoreAuditLogs are the further --audit-log values: with Once, files
	// or directories replayed with AuditLog, in log order.
	MoreAuditLogs []string

	// ShutdownTimeout bounds the drain after a stop signal (default 7s,
	// inside the contract's 10 s).
	ShutdownTimeout time.Duration
	// CheckpointInterval is how often an advanced checkpoint is written
	// (default 200ms: a SIGKILL re-sends at most that much); it is also
	// written on shutdown.
	CheckpointInterval time.Duration
	// Logger receives the agent's logs (never a token or a raw line).
	Logger *slog.Logger

	// openCheckpoints opens the checkpoint store of StateDir (tests wrap
	// it); the checkpoint package's store when nil.
	openCheckpoints func(dir string) (checkpoints, error)
}

// Validate reports the first problem with c as a one-line error naming the
// flag to fix.
func (c *Config) Validate() error {
	for _, check := range []func() error{c.validateIdentity, c.validateTransport, c.validateReading} {
		if err := check(); err != nil {
			return err
		}
	}
	if c.MetricsAddr != "" {
		if err := checkHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr %q: %w", c.MetricsAddr, err)
		}
	}
	return nil
}

// validateIdentity checks the required flags, the cluster and node names
// and the aggregator's address.
func (c *Config) validateIdentity() error {
	switch {
	case c.AuditLog == "":
		return errors.New("--audit-log: must not be empty")
	case c.Cluster == "":
		return errors.New("--cluster is required")
	case c.NodeName == "":
		return errors.New("--node-name is required when $NODE_NAME and the hostname are empty")
	case c.Aggregator == "":
		return errors.New("--aggregator HOST:PORT is required")
	}
	if err := tlsconf.ValidateClusterName(c.Cluster); err != nil {
		return fmt.Errorf("--cluster: %w", err)
	}
	if err := wire.ValidateNodeName(c.NodeName); err != nil {
		// The aggregator refuses such a Hello: say so now, not at
		// every connection attempt.
		return fmt.Errorf("--node-name %.64q (default $NODE_NAME, else the hostname): %w", c.NodeName, err)
	}
	if err := checkHostPort(c.Aggregator); err != nil {
		return fmt.Errorf("--aggregator %q: %w", c.Aggregator, err)
	}
	return nil
}

// validateTransport checks that the connection is mTLS with all three
// files, or --insecure to loopback.
func (c *Config) validateTransport() error {
	hasTLS := c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != ""
	switch {
	case c.Insecure && hasTLS:
		return errors.New("--insecure cannot be combined with --tls-cert, --tls-key or --tls-ca")
	case c.Insecure:
		if err := tlsconf.CheckLoopback(c.Aggregator); err != nil {
			return fmt.Errorf("--insecure is for loopback only: --aggregator: %w", err)
		}
	case !hasTLS:
		return errors.New("no transport security: give --tls-cert, --tls-key and --tls-ca for mTLS, or --insecure for an aggregator on loopback")
	case c.TLSCert == "":
		return errors.New("--tls-cert is required with --tls-key and --tls-ca")
	case c.TLSKey == "":
		return errors.New("--tls-key is required with --tls-cert and --tls-ca")
	case c.TLSCA == "":
		return errors.New("--tls-ca is required with --tls-cert and --tls-key")
	}
	return nil
}

// validateReading checks where and how the audit log is read: --start-at,
// --once and the files it replays.
func (c *Config) validateReading() error {
	switch c.StartAt {
	case follow.StartBeginning, follow.StartEnd:
	default:
		return fmt.Errorf("--start-at %q: want %q or %q", c.StartAt, follow.StartBeginning, follow.StartEnd)
	}
	if !c.Once && strings.HasSuffix(c.AuditLog, ".gz") {
		return fmt.Errorf("--audit-log %s: a compressed file can only be replayed with --once", c.AuditLog)
	}
	if len(c.MoreAuditLogs) > 0 && !c.Once {
		return fmt.Errorf("--audit-log given %d times: several files are replayed only with --once", len(c.MoreAuditLogs)+1)
	}
	if len(c.MoreAuditLogs) > 0 && c.StateDir != "" {
		return errors.New("--state-dir: a checkpoint follows one file: replay several --audit-log files without it")
	}
	if c.Once && c.AuditPolicyFile != "" {
		return errors.New("--audit-policy-file: watched only while following, not with --once")
	}
	if c.Once && c.OnceTimeout <= 0 {
		return fmt.Errorf("--once-timeout %s: must be positive", c.OnceTimeout)
	}
	return nil
}

// checkHostPort accepts HOST:PORT and :PORT with a numeric port.
func checkHostPort(addr string) error {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return errors.New("want HOST:PORT")
	}
	port := addr[i+1:]
	if port == "" {
		return errors.New("missing port")
	}
	for _, r := range port {
		if r < '0' || r > '9' {
			return fmt.Errorf("port %q is not a number", port)
		}
	}
	return nil
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.ShutdownTimeout <= 0 {
		d.ShutdownTimeout = 7 * time.Second
	}
	if d.CheckpointInterval <= 0 {
		d.CheckpointInterval = 200 * time.Millisecond
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}
