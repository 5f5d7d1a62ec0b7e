// Package tlsconf owns the transport security of the agent–aggregator link:
// mutual TLS configurations whose certificates, keys and CA bundles are
// re-read from disk when they change (cert-manager renewals, Kubernetes
// secret mounts that swap a "..data" symlink), the loopback check that
// guards --insecure, and the binding of an agent's cluster name to the
// SPIFFE URI SAN of its certificate (spiffe://<trust-domain>/cluster/<name>).
//
// Reloading is done on the handshake path: every new TLS handshake re-reads
// the files (they are small), and only re-parses them when their bytes
// changed. A broken intermediate state (a new certificate next to the old
// key while a renewal is half written) keeps the last good material and is
// logged, so established connections and a restart-free rotation both work.
package tlsconf
