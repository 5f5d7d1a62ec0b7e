// Package wire converts audit events to and from the agent–aggregator wire
// messages. Only typed fields cross: never a raw line, never responseObject.
package wire
