// Package rule decides whether an audit event is a token mint that alerts:
// the seed rule's match and its exclusions, with tokenwatch's two hardenings
// (strict_groups, platform). It is pure: no I/O, no clock.
package rule
