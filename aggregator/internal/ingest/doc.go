// Package ingest is the aggregator's gRPC edge: it serves
// AuditStreamService to agents and the standard gRPC health service.
//
// A stream starts with a Hello, answered by a Welcome once the agent's
// cluster is bound: from the agent certificate's SPIFFE URI SAN with mTLS
// (a differing claimed name is refused with PermissionDenied and counted),
// as claimed with --insecure. Each Batch, whose seq must follow the previous
// one, goes through the pipeline and is acknowledged only after the state
// commit. Heartbeats of non-replay agents feed the silence tracker.
//
// Token lineage: an agent whose Hello declares the "lineage" feature, while
// lineage is enabled, gets a Welcome with LineageSettings and joins the
// fleet of lineage streams: it is sent the whole watch set first (reset on
// the first update, each message under 4 MiB), then every change a batch of
// any stream makes, queued on every lineage stream before that batch's Ack
// is queued on its own. Each stream has one sending path (its outbox, one
// writer goroutine) for acks and watch updates; a stream whose pending
// updates pass Options.MaxPendingWatches is ended and counted, never
// waited for. An agent without the feature is reported to the pipeline and
// sent no update. Batch.uses and Batch.counts are decoded as plain protobuf
// and handed to Process; an excluded token create made with a bound token
// is kept for Process to judge as a possible chain or a use of a watched
// token.
package ingest
