package agent

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"sync"
)

// formatWindow is how much of the live audit log's end is read to find its
// newest complete line. JSON audit lines are a few KiB; when the window
// holds no whole line the last verdict stands.
const formatWindow = 64 << 10

// legacyFault is what a line of the legacy text format gets.
const legacyFault = "its lines are in the legacy text format (kube-apiserver --audit-log-format=legacy): tokenwatch reads json only, nothing in it can be matched"

// formatWatch looks, for each heartbeat, at the newest complete line of the
// live audit log and says when it is not a JSON audit event: a
// kube-apiserver switched to --audit-log-format=legacy writes a log that
// grows and holds nothing the agent can match. It logs each change once.
// It is safe for concurrent use.
type formatWatch struct {
	path string
	log  *slog.Logger

	mu    sync.Mutex
	buf   []byte
	fault string // the last verdict
}

func newFormatWatch(path string, log *slog.Logger) *formatWatch {
	return &formatWatch{path: path, log: log}
}

// check returns why the newest complete line is not a JSON audit event, ""
// when it is; when no complete line can be seen (no file, an empty one, a
// line longer than the window) the last verdict stands.
func (w *formatWatch) check() string {
	if w == nil {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	line, err := w.lastLine()
	if err != nil {
		return w.fault
	}
	fault := formatFault(line)
	switch {
	case fault == w.fault:
	case fault != "":
		w.log.Warn("audit log is not in the JSON format: nothing in it can be matched", "audit_log", w.path, "err", fault)
	default:
		w.log.Info("audit log is in the JSON format again", "audit_log", w.path)
	}
	w.fault = fault
	return fault
}

var errNoLine = errors.New("no complete line in view")

// lastLine returns the newest complete line of the file, without its
// newline; it is valid until the next call.
func (w *formatWatch) lastLine() ([]byte, error) {
	f, size, err := openRegular(w.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	off := max(0, size-formatWindow)
	if w.buf == nil {
		w.buf = make([]byte, formatWindow)
	}
	n, err := f.ReadAt(w.buf[:size-off], off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	b := w.buf[:n]
	end := bytes.LastIndexByte(b, '\n') // a line being written is not looked at
	if end < 0 {
		return nil, errNoLine
	}
	b = b[:end]
	start := bytes.LastIndexByte(b, '\n')
	if start < 0 && off > 0 {
		return nil, errNoLine // its start is before the window
	}
	if line := b[start+1:]; len(line) > 0 {
		return line, nil
	}
	return nil, errNoLine
}

// formatFault says why line is not a JSON audit event, "" when it may be
// one (it starts an object). It never quotes the line: audit data stays out
// of heartbeats and records.
func formatFault(line []byte) string {
	switch {
	case line[0] == '{':
		return ""
	case bytes.Contains(line[:min(len(line), 96)], []byte(" AUDIT: ")):
		return legacyFault
	}
	return "its newest line is not a JSON audit event (it does not start with '{'): nothing in such lines can be matched"
}
