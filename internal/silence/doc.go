// Package silence notices control-plane nodes whose agent stopped sending
// heartbeats, or whose audit log stopped growing: an attacker's first move
// may be to turn auditing off. It emits cluster_silent once per silence and
// cluster_resumed when the node is heard from again. It is pure: no I/O, no
// clock (time is given).
package silence
