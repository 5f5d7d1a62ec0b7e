package export

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel/sdk/resource"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// JSON writes each export as one line in the OTLP JSON file format: the
// protojson form of an ExportLogsServiceRequest ({"resourceLogs":[...]}),
// compact, with enum numbers, as the Collector's file exporter writes and its
// otlpjsonfile receiver reads.
type JSON struct {
	mu  sync.Mutex
	w   io.Writer
	res *resource.Resource
	now func() time.Time
}

var _ Exporter = (*JSON)(nil)

// NewJSON returns an exporter that writes to w (usually os.Stdout).
func NewJSON(w io.Writer) *JSON {
	return &JSON{w: w, res: newResource(), now: time.Now}
}

var marshalOpts = protojson.MarshalOptions{UseEnumNumbers: true}

// Export writes recs as one line, in a single Write.
func (j *JSON) Export(_ context.Context, recs []alert.Record) error {
	if len(recs) == 0 {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	line, err := j.encode(recs)
	if err != nil {
		return err
	}
	if _, err := j.w.Write(line); err != nil {
		return fmt.Errorf("write otlp json: %w", err)
	}
	return nil
}

func (j *JSON) encode(recs []alert.Record) ([]byte, error) {
	b, err := marshalOpts.Marshal(buildRequest(j.res, recs, j.now()))
	if err != nil {
		return nil, fmt.Errorf("encode otlp json: %w", err)
	}
	// protojson varies its whitespace on purpose; compact it to one stable line.
	var buf bytes.Buffer
	buf.Grow(len(b) + 1)
	if err := json.Compact(&buf, b); err != nil {
		return nil, fmt.Errorf("compact otlp json: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// Shutdown does nothing: every Export is written at once.
func (j *JSON) Shutdown(context.Context) error { return nil }
