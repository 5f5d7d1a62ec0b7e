// Command agent follows a kube-apiserver audit log on a control-plane node
// and streams its service-account token creates to the tokenwatch aggregator.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokenwatch/tokenwatch/agent/internal/agent"
	"github.com/tokenwatch/tokenwatch/internal/version"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run parses args, runs the agent and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, logLevel, show, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	if show.version {
		fmt.Fprintln(stdout, version.String("agent"))
		return 0
	}
	if show.policy != "" {
		return checkPolicy(show.policy, stdout, stderr)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	if err := cfg.CheckCertificate(); err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 1
	}
	return 0
}

// checkPolicy prints which token requests the audit policy at path keeps
// out of the audit log and returns the exit code: 0 for none, 1 for some,
// 2 when it cannot be read as a policy.
func checkPolicy(path string, stdout, stderr io.Writer) int {
	gaps, leaks, err := agent.CheckAuditPolicy(path)
	if err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	if len(gaps) == 0 && len(leaks) == 0 {
		fmt.Fprintf(stdout, "%s: every token request is logged at a stage tokenwatch reads, none with its token\n", path)
		return 0
	}
	if len(gaps) > 0 {
		fmt.Fprintf(stdout, "%s keeps token requests out of the audit log, where tokenwatch cannot see them:\n", path)
		for _, g := range gaps {
			fmt.Fprintln(stdout, "  "+g.String())
		}
	}
	if len(leaks) > 0 {
		fmt.Fprintf(stdout, "%s writes minted tokens into the audit log in clear text:\n", path)
		for _, g := range leaks {
			fmt.Fprintln(stdout, "  "+g.String())
		}
	}
	fmt.Fprintln(stdout, "Put the tokenwatch rule first (deploy/kubeadm/audit-policy.yaml's first rule: level Request).")
	return 1
}

// shown is what a run prints instead of running: the version, or the
// check of an audit policy file.
type shown struct {
	version bool
	policy  string
}

// parseFlags fills the agent's Config from the command line, applying the
// defaults that depend on other flags (--once changes --start-at and
// --state-dir). --help prints the usage to help; a bad flag is only
// returned, for run to report on one line.
func parseFlags(args []string, help io.Writer) (agent.Config, slog.Level, shown, error) {
	var c agent.Config
	var level slog.Level
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.AuditLog = agent.DefaultAuditLog
	fs.Var(&auditLogFlag{c: &c}, "audit-log", "the kube-apiserver audit log `PATH`; rotated siblings (audit-<time>.log, .1, .gz) are found by identity. With --once: a file, a directory, or given again for more files, replayed in log order")
	fs.StringVar(&c.Cluster, "cluster", "", "the cluster `NAME` this agent reports for (required; with mTLS it must match the certificate)")
	fs.StringVar(&c.NodeName, "node-name", defaultNode(), "this control-plane node's `NAME` (default from $NODE_NAME, else the hostname)")
	fs.StringVar(&c.Aggregator, "aggregator", "", "the aggregator's `HOST:PORT` (required)")
	fs.BoolVar(&c.Insecure, "insecure", false, "plaintext to an aggregator on loopback")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "agent certificate `FILE` (PEM; reloaded when it changes)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "agent private key `FILE` (PEM)")
	fs.StringVar(&c.TLSCA, "tls-ca", "", "`FILE` with the CA certificates of the aggregator")
	fs.StringVar(&c.StateDir, "state-dir", agent.DefaultStateDir, "checkpoint `DIR` (with --once: none unless given)")
	fs.StringVar(&c.StartAt, "start-at", "end", "`beginning|end`: where to begin in the live file without a checkpoint (with --once: beginning)")
	fs.BoolVar(&c.Once, "once", false, "replay: read the --audit-log files (plain or .gz) to their end, wait for every acknowledgement, exit")
	fs.DurationVar(&c.OnceTimeout, "once-timeout", agent.DefaultOnceTimeout, "with --once, exit 1 when the aggregator cannot be reached for this `DURATION`")
	fs.StringVar(&c.AuditPolicyFile, "audit-policy-file", "", "the kube-apiserver's audit policy `FILE` (its --audit-policy-file), read-only: its SHA-256 goes with each heartbeat and the aggregator reports a change (default: not watched)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve /metrics, /healthz and /readyz on `HOST:PORT` (default: off)")
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log `LEVEL`: debug, info, warn or error")
	var show shown
	fs.BoolVar(&show.version, "version", false, "print the version and exit")
	fs.StringVar(&show.policy, "check-audit-policy", "", "read the audit policy `FILE` as kube-apiserver applies it to token requests, print those it keeps out of the audit log or logs with their token, and exit: 0 for none, 1 for some, 2 when it cannot be read")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(help)
		fmt.Fprintln(help, "Usage of agent:")
		fs.PrintDefaults()
		return c, level, show, err
	} else if err != nil {
		return c, level, show, fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return c, level, show, fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.Once && !set["start-at"] {
		c.StartAt = "beginning"
	}
	if c.Once && !set["state-dir"] {
		c.StateDir = ""
	}
	return c, level, show, nil
}

func defaultNode() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}
