// Package server wires the aggregator together: configuration file and its
// reload, durable state, the pipeline, the gRPC ingest with mTLS, the OTLP
// exporter draining the outbox, and the metrics/health HTTP endpoint. main
// fills a Config from flags and calls Run.
//
// Shutdown (ctx cancelled) happens in dependency order within ShutdownTimeout:
// stop taking batches and wait for those in flight, close agent streams, run
// the pipeline's last tick, drain the outbox to the exporter, stop HTTP,
// close the store.
package server
