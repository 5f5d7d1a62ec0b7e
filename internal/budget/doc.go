// Package budget caps the token_request alerts emitted per window,
// fleet-wide, and summarises what it held back in one alerts_suppressed
// record per window. Held-back alerts are acknowledged, still feed
// correlation, and are never emitted later: the summary is their record.
// It is pure: no I/O, no clock (time is given).
package budget
