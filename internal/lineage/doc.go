// Package lineage follows the tokens tokenwatch alerted on: which token a
// later request used (its JTI in user.extra), what the minter did next, and
// which legacy Secret-based tokens are still in use. It is pure: no I/O, no
// clock (time is given).
package lineage
