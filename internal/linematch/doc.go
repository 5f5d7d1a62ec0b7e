// Package linematch finds, in audit log lines, exactly the requests that
// matter to token lineage: requests authenticated with a watched token
// (Token), sensitive actions of a followed minter by user name (ActorUser)
// or by the credential it used (ActorCredential), and requests made with a
// legacy Secret-based token (Legacy). Token creates are never lineage
// matches: the pre-filter sends them.
//
// Classify is the exact decision on a decoded event, under a Set of
// watches. Matcher.Block finds the lines of a block that Classify matches,
// decoding only candidates; it is exact: a line is a hit iff Classify of its
// audit.Decode says so. Candidates come from byte searches that never miss,
// each a pass for one byte rare in audit lines, run together over windows
// of the block (64 KiB of whole lines) so that each pass reads from the
// cache: "JTI=" entries of a list ('J') whose uuid the set watches,
// "legacy-token" ('y'), and any \u00XX escape ('\') of a byte that could
// hide one of those. Followed user names matter only in sensitive actions:
// the lines that may be one (an "objectRef" ('j') whose flat object names a
// sensitive resource, or "impersonatedUser" ('U')) are found first, and
// the values of their "username" keys are read in those lines alone. Only
// what the set needs is searched: with no watch, "legacy-token" and
// escapes.
//
// The package is pure: no clock, file or socket; times are parameters.
package linematch
