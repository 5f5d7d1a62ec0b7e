package sender

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Classes of failed attempts, the value of the "class" log attribute.
const (
	// ClassStreamEnded: a transient failure (network, aggregator restart,
	// limits); retried with growing backoff.
	ClassStreamEnded = "stream_ended"
	// ClassRefused: the aggregator refused this agent's identity
	// (PermissionDenied, Unauthenticated); retrying cannot heal it.
	ClassRefused = "refused"
)

// Failure says why an attempt failed and how to retry.
type Failure struct {
	Class   string // a short stable name
	Message string // the log message: what is wrong, in words
	// Permanent failures cannot heal by retrying alone (an operator must
	// act): the next attempts wait BackoffMax.
	Permanent bool
}

// DefaultClassify names gRPC refusals of the agent's identity; everything
// else is a transient ClassStreamEnded.
func DefaultClassify(err error) Failure {
	switch status.Code(err) {
	case codes.PermissionDenied:
		return Failure{Class: ClassRefused, Permanent: true,
			Message: "aggregator refused this agent: its certificate binds another cluster; fix --cluster or the certificate (retrying at the maximum backoff)"}
	case codes.Unauthenticated:
		return Failure{Class: ClassRefused, Permanent: true,
			Message: "aggregator refused this agent's certificate identity (SPIFFE ID or trust domain); fix the certificate (retrying at the maximum backoff)"}
	}
	return Failure{Class: ClassStreamEnded, Message: "aggregator stream ended; reconnecting"}
}

func (s *Sender) classify(err error) Failure {
	if s.cfg.Classify != nil {
		if f := s.cfg.Classify(err); f.Class != "" {
			return f
		}
	}
	return DefaultClassify(err)
}
