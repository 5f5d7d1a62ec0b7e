// Package linematch finds, in audit log lines, exactly the requests that
// matter to token lineage: requests authenticated with a watched token
// (Token), sensitive actions of a followed minter by user name (ActorUser)
// or by the credential it used (ActorCredential), and requests made with a
// legacy Secret-based token (Legacy).
//
// Classify is the exact decision on a decoded event. Matcher.Block finds the
// lines of a block that Classify matches, decoding only candidates: a
// byte-level search that never misses a true match (the literal forms of what
// the watch set needs, and any \u escape of a byte that could hide one)
// selects them, and audit.Decode and Classify decide. LineKeys and Lookback
// keep cheap per-line keys of recently read lines so that a watch arriving
// later finds the lines it would have matched.
//
// The package is pure: no clock, file or socket; times are parameters.
package linematch
