// Command genaudit writes a synthetic kube-apiserver audit log (routine
// traffic, system identities minting tokens, attacks, decoys) and,
// optionally, the requests that must alert as JSON.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/auditgen"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	def := auditgen.DefaultConfig()
	fs := flag.NewFlagSet("genaudit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "-", "audit log to write (- for stdout)")
	expect := fs.String("expect", "", "write the requests that must alert to this JSON file")
	seed := fs.Uint64("seed", def.Seed, "random seed (same seed, same log)")
	lines := fs.Int("lines", def.Lines, "approximate number of lines")
	rate := fs.Float64("token-rate", def.TokenRate, "fraction of routine requests that are system token creates")
	start := fs.String("start", def.Start.Format(time.RFC3339), "timestamp of the first request (RFC 3339)")
	step := fs.Duration("step", def.Step, "time between two requests")
	attacks := fs.Bool("attacks", true, "include the attack scenario")
	tokens := fs.Bool("response-tokens", false, "log token creates at RequestResponse level with a minted token (leak tests)")
	pad := fs.Int("pad", def.Pad, "pad routine lines to about this many bytes (0: natural size)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: genaudit [flags]\n\nWrites a synthetic kube-apiserver audit log.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	t, err := time.Parse(time.RFC3339, *start)
	if err != nil {
		fmt.Fprintf(stderr, "genaudit: -start: %v\n", err)
		return 2
	}
	if *lines < 0 || *rate < 0 || *rate > 1 || *step <= 0 {
		fmt.Fprintln(stderr, "genaudit: -lines must be >= 0, -token-rate within [0,1], -step > 0")
		return 2
	}
	cfg := auditgen.Config{Seed: *seed, Lines: *lines, TokenRate: *rate, Start: t, Step: *step,
		Attacks: *attacks, ResponseTokens: *tokens, Pad: *pad}
	if err := generate(cfg, *out, *expect, stdout); err != nil {
		fmt.Fprintf(stderr, "genaudit: %v\n", err)
		return 1
	}
	return 0
}

func generate(cfg auditgen.Config, out, expect string, stdout io.Writer) (err error) {
	w := stdout
	if out != "-" {
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("create audit log: %w", err)
		}
		defer func() { err = errors.Join(err, f.Close()) }()
		w = f
	}
	want, _, err := auditgen.Generate(w, cfg)
	if err != nil {
		return err
	}
	if expect == "" {
		return nil
	}
	b, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		return fmt.Errorf("encode expected alerts: %w", err)
	}
	if err := os.WriteFile(expect, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write expected alerts: %w", err)
	}
	return nil
}
