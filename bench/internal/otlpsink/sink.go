// Package otlpsink is an OTLP/gRPC logs receiver for the benchmarks: it
// accepts every export, counts the log records and notes when each
// token-request record arrived, keyed by its kubernetes.audit.auditID.
package otlpsink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // the Collector's OTLP exporter compresses by default
)

// AuditIDKey is the attribute that identifies a token-request record's line.
const AuditIDKey = "kubernetes.audit.auditID"

// RawAuditIDKey is the same for a record of the raw audit event, as the
// Collector's json_parser writes it (the event's own top-level key).
const RawAuditIDKey = "auditID"

// Sink receives OTLP logs: tokenwatch's alerts (auditID in AuditIDKey) or
// the Collector's parsed audit events (in RawAuditIDKey). Use Start; Stop
// when done.
type Sink struct {
	collogspb.UnimplementedLogsServiceServer

	srv  *grpc.Server
	lis  net.Listener
	done chan error
	now  func() time.Time

	mu      sync.Mutex
	records int64
	arrived map[string]time.Time // first arrival per auditID
	byEvent map[string]time.Time // first arrival per EventName and auditID
	changed chan struct{}
}

var _ collogspb.LogsServiceServer = (*Sink)(nil)

// Start listens on addr (e.g. "127.0.0.1:0") and serves until Stop.
func Start(addr string) (*Sink, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for OTLP on %s: %w", addr, err)
	}
	s := &Sink{
		srv:     grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20)),
		lis:     lis,
		done:    make(chan error, 1),
		now:     time.Now,
		arrived: map[string]time.Time{},
		byEvent: map[string]time.Time{},
		changed: make(chan struct{}),
	}
	collogspb.RegisterLogsServiceServer(s.srv, s)
	go func() { s.done <- s.srv.Serve(lis) }()
	return s, nil
}

// Addr is the address the sink listens on.
func (s *Sink) Addr() string { return s.lis.Addr().String() }

// Stop closes the listener and every connection, and waits for the server.
// It is safe to call twice.
func (s *Sink) Stop() error {
	s.srv.Stop()
	err, ok := <-s.done
	if !ok {
		return nil
	}
	close(s.done)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Export records the request's arrival.
func (s *Sink) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	now := s.now()
	var n int64
	var ids, keys []string
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				n++
				for _, kv := range lr.GetAttributes() {
					if k := kv.GetKey(); k == AuditIDKey || k == RawAuditIDKey {
						id := kv.GetValue().GetStringValue()
						ids = append(ids, id)
						keys = append(keys, eventKey(lr.GetEventName(), id))
						break
					}
				}
			}
		}
	}
	s.mu.Lock()
	s.records += n
	for _, id := range ids {
		if _, ok := s.arrived[id]; !ok {
			s.arrived[id] = now
		}
	}
	for _, k := range keys {
		if _, ok := s.byEvent[k]; !ok {
			s.byEvent[k] = now
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// Records returns the number of log records received.
func (s *Sink) Records() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.records
}

// Arrival returns when the record of auditID first arrived.
func (s *Sink) Arrival(auditID string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.arrived[auditID]
	return t, ok
}

// ArrivalOf returns when the first record named eventName (its EventName,
// e.g. "tokenwatch.token_use") of auditID arrived: one request can give
// several records (a mint's token_request and its actor_followup).
func (s *Sink) ArrivalOf(eventName, auditID string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.byEvent[eventKey(eventName, auditID)]
	return t, ok
}

func eventKey(eventName, auditID string) string { return eventName + "\x00" + auditID }

// IDs returns how many distinct audit IDs arrived.
func (s *Sink) IDs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.arrived)
}

// WaitRecords waits until at least n records arrived or ctx ends.
func (s *Sink) WaitRecords(ctx context.Context, n int64) error {
	for {
		s.mu.Lock()
		got, ch := s.records, s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("OTLP sink got %d of %d records: %w", got, n, ctx.Err())
		}
	}
}

// WaitIDs waits until every auditID in ids arrived or ctx ends.
func (s *Sink) WaitIDs(ctx context.Context, ids []string) error {
	for {
		s.mu.Lock()
		missing := 0
		for _, id := range ids {
			if _, ok := s.arrived[id]; !ok {
				missing++
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if missing == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("OTLP sink misses %d of %d records: %w", missing, len(ids), ctx.Err())
		}
	}
}
