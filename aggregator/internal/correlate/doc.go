// Package correlate finds what no single cluster's log shows: one actor or
// one source minting tokens across clusters, or for many service accounts.
// It works on event time with sliding windows and bounded lateness, and is
// pure: no I/O, no clock (time is given). Its state does not survive a
// restart; after one, agents re-send what was not acknowledged and a crossing
// formed again from the same events gets the same record ID.
package correlate
