// Package export turns alert records into OpenTelemetry log records and
// delivers them: over OTLP/gRPC with the OpenTelemetry Go logs SDK and its
// otlploggrpc exporter, or, when no endpoint is configured, to stdout in the
// OTLP JSON file format (one ExportLogsServiceRequest per line, as the
// Collector's file exporter writes and its otlpjsonfile receiver reads).
//
// Exports are synchronous: an Exporter reports success only when the
// endpoint accepted the records. The Drainer moves records from the durable
// outbox (package state) to an Exporter and marks them exported only then,
// retrying with capped exponential backoff and jitter, so a collector outage
// delays alerts but never loses them.
//
// Delivery is at least once: a record exported just before the aggregator
// is killed (SIGKILL), and not yet marked exported, is exported again after
// the restart; that is the contract's one exception to "exactly one record
// per request". A partial success (the endpoint accepted the request but
// rejected some records) is not retried, since resending would duplicate
// the accepted records: the rejected ones are counted as rejected only, and
// an export_rejected pipeline record, added to the outbox, says how many
// and why (not for a batch of such records only, so a collector that
// rejects them too does not make a loop).
package export
