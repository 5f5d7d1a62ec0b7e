package server

import (
	"context"
	"os"

	"github.com/tokenwatch/tokenwatch/aggregator/internal/export"
)

// newStdoutOrOTLP is the exporter for cfg: the text exporter when --output
// text asks for it and no OTLP endpoint is configured (stdout mode), else
// export.New (OTLP, or OTLP JSON on stdout).
func newStdoutOrOTLP(ctx context.Context, c Config, cfg export.Config) (export.Exporter, error) {
	getenv := c.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	if c.Output == export.OutputText && cfg.UsesStdout(getenv) {
		return export.NewText(c.Stdout), nil
	}
	return export.New(ctx, cfg, c.Getenv, c.Stdout)
}

// stdoutFormat says how records are written to stdout, for the warning
// that no OTLP endpoint is configured.
func stdoutFormat(output string) string {
	if output == export.OutputText {
		return "as text, one line per record (--output text)"
	}
	return "in the OTLP JSON file format"
}
