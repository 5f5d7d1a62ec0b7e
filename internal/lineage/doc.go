// Package lineage follows the tokens tokenwatch alerted on: which later
// requests used a minted token (its JTI in user.extra), what the minter did
// next, which token requests were made with a watched token (chains), and
// which legacy Secret-based tokens are still in use. It is pure: no I/O, no
// clock (time is given).
//
// Only State.Mint creates a watch, for a token request that alerted. A use
// counts when its requestReceivedTimestamp lies in [mint time, Until]
// (TTL) and the token is still held: it is freed TTL + lookback after the
// aggregator learnt of the mint, on the aggregator's clock, so that a
// backlog replay still finds the uses that follow a mint in its file, and
// a forged time far ahead cannot keep it for years.
//
// Reasons of a token_use are decided in the order uses arrive. A reason is
// new once per (token, reason, key): new_source_ip is keyed by source IP,
// other_cluster by cluster, sensitive_action by action and namespace;
// first_use and source_ip_differs_from_mint have one key per token (the
// first use; the first use from another IP than the mint's). first_use and
// new_source_ip hold only when new; the others hold on every use they
// describe, and any but first_use makes the record high.
//
// Minters are followed for actor_window per mint: an action is attributed
// to the latest mint whose window holds it and reported once per (actor,
// action, cluster, namespace, resource, name) in that window. A service
// account is followed by the token it minted with, never by name.
//
// The state is a set of entries (token by JTI, actor by kind and key,
// legacy accumulator by cluster and service account, dropped-watch count),
// each JSON with stable field names: Changes returns those changed since
// the last call, to commit with the batch's acknowledgement, and Load
// rebuilds the state from them.
package lineage
