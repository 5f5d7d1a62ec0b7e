// Package detect turns matching audit events into alerts: it keys requests,
// picks the stage to alert from (with a grace period for a lone
// RequestReceived), and builds the tokenwatch.token_request record with every
// attribute of the contract. It is pure: no I/O, no clock.
package detect
