// Package guard protects the aggregator's gRPC server from a hostile or
// broken peer: it bounds received message size, events (lineage uses and
// counts included) and loss reports per batch, concurrent streams (server-wide, per cluster and per client
// certificate from the stream's first moment; health watches in a pool of
// their own), the time to a stream's Hello, and each cluster's rate of
// events and messages, and it enforces keepalive policy. Every
// violation ends only the offending stream with ResourceExhausted (gRPC
// itself answers an undecodable message with Internal) and is counted in
// tokenwatch_aggregator_limit_violations_total{reason}.
//
// All of it is installed through ServerOptions: the stream interceptor sees
// the agent's Hello (cluster, node) and every message after it, so the
// ingest handler needs no hook of its own.
//
// Rate limits hold a stream back before refusing it: an agent over its
// budget is slowed (HTTP/2 flow control pushes back to its sender, which then
// packs more events per batch), and only a message that would have to wait
// longer than MaxThrottle — many streams sharing one agent's budget, or one
// batch larger than the burst — ends the stream.
//
// Keepalive violations are enforced by gRPC itself (GOAWAY too_many_pings),
// which reports them nowhere; Credentials wraps the server's transport
// credentials to see that GOAWAY on the connection, after TLS, and count it.
package guard
