// Package pipeline turns the batches agents stream into durable alert
// records: exclusions, the one-alert-per-request stage logic with its grace
// period, correlation, the alert budget, loss reports and silence.
//
// For every event of a batch the rule decides; excluded events (the vast
// majority: system identities) cost one evaluation and are counted, nothing
// is stored. A matching event is keyed by request (cluster, auditID,
// requestReceivedTimestamp) and detect.Plan, from the request's stored
// state, picks the action (the store records the result and decides nothing):
// a RequestReceived is held as pending (in the encoding it arrived in) with a
// deadline of now+stage_grace, a completion becomes the alert and marks the
// request done, a late completion is dropped and counted. At its deadline a
// lone RequestReceived is judged again with the rule in force then, and
// detect.Due decides: it alerts alone (event.outcome=unknown) and marks the
// request done alone, or marks it done when it no longer alerts. Every alerting request feeds the
// correlator and passes the budget. All records of a batch are written in
// one state commit, after which the batch may be acknowledged.
//
// The pipeline never reads the clock itself: Now is injected, and Tick does
// one round of the periodic work (due pendings, budget flush, silence) at a
// given time, so tests drive it without sleeping.
package pipeline
