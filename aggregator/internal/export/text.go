package export

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// Output formats of the stdout exporter (--output).
const (
	OutputOTLPJSON = "otlp-json" // the OTLP JSON file format, for machines (default)
	OutputText     = "text"      // one aligned line per record, for people
)

// ValidateOutput reports whether format is a known --output value.
func ValidateOutput(format string) error {
	switch format {
	case OutputOTLPJSON, OutputText:
		return nil
	}
	return fmt.Errorf("--output %.64q: want %s or %s", format, OutputOTLPJSON, OutputText)
}

// Column widths of TextLine (the last column, NOTE, is not padded): wide
// enough for most values, a longer one shifts the rest of its line.
var textWidths = [...]int{20, 8, 12, 20, 28, 30, 15, 7}

// textHeader names the columns of TextLine.
var textHeader = textRow([...]string{"TIME", "SEVERITY", "CLUSTER", "KIND", "WHO", "WHAT", "FROM", "OUTCOME"}, "NOTE")

// textRow pads fields to their column widths, then appends note.
func textRow(fields [len(textWidths)]string, note string) string {
	var b strings.Builder
	for i, f := range fields {
		b.WriteString(f)
		b.WriteString(strings.Repeat(" ", max(textWidths[i]-utf8.RuneCountInString(f), 0)+2))
	}
	b.WriteString(note)
	return strings.TrimRight(b.String(), " ")
}

// TextLine renders r as one line for people: time, severity, cluster,
// kind, who, what, from where, outcome and a note, in padded columns. An
// empty field is "-". Every field comes from an audit log an attacker may
// write to, so control characters never reach the terminal: a field holding
// one, or a space (except the note, the last column), is quoted as a Go
// string. The line has no trailing newline.
func TextLine(r *alert.Record) string {
	str := func(k string) string {
		v, _ := r.Attr(k)
		switch v.Kind {
		case alert.KindStrings:
			return strings.Join(v.Strings, ",")
		case alert.KindInt:
			return strconv.FormatInt(v.Int, 10)
		case alert.KindBool:
			return strconv.FormatBool(v.Bool)
		}
		return v.Str
	}
	cluster, kind, who, what, outcome, note := str("k8s.cluster.name"), strings.TrimPrefix(r.EventName, "tokenwatch."), str("user.name"), "", "", r.Body
	switch r.EventName {
	case alert.EventTokenRequest:
		if ns, name := str("kubernetes.audit.objectRef.namespace"), str("kubernetes.audit.objectRef.name"); ns+name != "" {
			what = ns + "/" + name
		}
		outcome = str("event.outcome")
		var notes []string
		if imp := str("kubernetes.audit.impersonatedUser.username"); imp != "" {
			notes = append(notes, "as "+imp)
		}
		if str("tokenwatch.dry_run") == "true" {
			notes = append(notes, "dry run")
		}
		if m := str("tokenwatch.exclusion.mismatch"); m != "" {
			notes = append(notes, m)
		}
		note = strings.Join(notes, "; ")
	case alert.EventCorrelation:
		cluster, kind = str("k8s.cluster.names"), str("tokenwatch.correlation.kind")
		if who == "" {
			who = str("source.ip")
		}
		what = str("tokenwatch.service_accounts")
	case alert.EventPipeline:
		kind, who = str("tokenwatch.pipeline.kind"), str("k8s.node.name")
	}
	fields := [...]string{r.Time.UTC().Format(time.RFC3339), r.Severity.Text, cluster, kind, who, what, str("source.ip"), outcome}
	for i, f := range fields {
		fields[i] = textField(f, true)
	}
	return textRow(fields, textField(note, false))
}

// textField is s as it may appear in a line: "-" when empty, quoted when it
// holds a character that is not printable (or a space, when spaceless).
func textField(s string, spaceless bool) string {
	if s == "" {
		return "-"
	}
	for _, c := range s {
		if !unicode.IsPrint(c) || (spaceless && c == ' ') {
			return strconv.Quote(s)
		}
	}
	return s
}

// Text writes each record as one line for people (TextLine), after a
// header line before the first record: for a terminal and kubectl logs.
type Text struct {
	mu     sync.Mutex
	w      io.Writer
	header bool // written
}

var _ Exporter = (*Text)(nil)

// NewText returns an exporter that writes lines to w (usually os.Stdout).
func NewText(w io.Writer) *Text { return &Text{w: w} }

// Export writes recs, one line each, in a single Write.
func (t *Text) Export(_ context.Context, recs []alert.Record) error {
	if len(recs) == 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	if !t.header {
		b.WriteString(textHeader + "\n")
	}
	for i := range recs {
		b.WriteString(TextLine(bounded(&recs[i])))
		b.WriteByte('\n')
	}
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return fmt.Errorf("write text: %w", err)
	}
	t.header = true
	return nil
}

// Shutdown does nothing: every Export is written at once.
func (t *Text) Shutdown(context.Context) error { return nil }
