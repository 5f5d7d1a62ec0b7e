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
// lone RequestReceived keeps the verdict it was held with, unless the rule
// was reloaded meanwhile (its ID differs): the rule in force then judges
// it. detect.Due decides: it alerts alone (event.outcome=unknown) and
// marks the request done alone, or marks it done when it no longer alerts.
// Every alerting request feeds the
// correlator and passes the budget. All records of a batch are written in
// one state commit, after which the batch may be acknowledged.
//
// Token lineage (internal/lineage) follows the tokens alerted on. An
// alerting request that issued a JTI is watched (budget-held ones too) and
// its record says until when; a token create authenticated with a watched
// token is a chain: it alerts even when only a default exclusion excludes
// it (chainScreen keeps it in the lifecycle, the lineage step decides in
// batch order, so a chain in its parent's batch is found), with its chain
// attributes, and is a use of its parent. The agents' uses and counts
// (Batch.Uses, Batch.Counts) become token_use, actor_followup, summary and
// legacy records; chains, first uses and pipeline records bypass the
// budget, the others count against it. The lineage state is mutated,
// drained (State.Changes) and its entries submitted with the batch's change
// under p.mu, so entries are committed in the order the state changed;
// after a failed commit it is rebuilt from the store. Result.WatchAdd and
// WatchRemove are the watch changes to push before the acknowledgement;
// Watches is the set for a new agent. The lineage section is read at start.
//
// The pipeline never reads the clock itself: Now is injected, and Tick does
// one round of the periodic work (due pendings, budget flush, silence) at a
// given time, so tests drive it without sleeping.
package pipeline
