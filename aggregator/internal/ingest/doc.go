// Package ingest is the aggregator's gRPC edge: it serves
// AuditStreamService to agents and the standard gRPC health service.
//
// A stream starts with a Hello, answered by a Welcome once the agent's
// cluster is bound: from the agent certificate's SPIFFE URI SAN with mTLS
// (a differing claimed name is refused with PermissionDenied and counted),
// as claimed with --insecure. Each Batch, whose seq must follow the previous
// one, goes through the pipeline and is acknowledged only after the state
// commit. Heartbeats of non-replay agents feed the silence tracker.
package ingest
