package detect

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

// Key identifies one request. auditID alone is not enough: the apiserver
// keeps a client-supplied Audit-ID header, so an attacker can reuse one.
type Key struct {
	Cluster         string
	AuditID         string
	RequestReceived string // requestReceivedTimestamp, exactly as logged
	// Place is set only for an Incomplete event, which is its own request:
	// where it was read (node, file fingerprint, offset) and a digest of
	// the event, so that reading the same data again, under another name
	// or compressed, gives the same key.
	Place string
}

// Incomplete reports whether e lacks auditID or requestReceivedTimestamp
// (old, converted or third-party logs): its request cannot be told apart
// from others by its fields, nor its stages joined.
func Incomplete(e *audit.Event) bool {
	return e.AuditID == "" || e.RequestReceivedTimestamp == ""
}

// KeyOf returns the key of e's request, read by src.
func KeyOf(src Source, e *audit.Event) Key {
	k := Key{Cluster: src.Cluster, AuditID: e.AuditID, RequestReceived: e.RequestReceivedTimestamp}
	if Incomplete(e) {
		k.Place = place(src, e)
	}
	return k
}

// place is the Key.Place of an incomplete event e read by src.
func place(src Source, e *audit.Event) string {
	var b strings.Builder
	b.WriteString(strconv.Quote(src.Node))
	if o := e.Origin; o != nil && len(o.Fingerprint) > 0 {
		fmt.Fprintf(&b, "/fp:%x:%d/%d", o.Fingerprint, o.FingerprintLen, o.Offset)
	} else if o != nil {
		fmt.Fprintf(&b, "/name:%s/%d", strconv.Quote(o.File), o.Offset)
	}
	// The digest tells apart events at one offset of files whose first
	// bytes agree; encoding/json sorts map keys, so it is stable.
	raw, err := json.Marshal(e)
	if err == nil {
		sum := sha256.Sum256(raw)
		fmt.Fprintf(&b, "/ev:%x", sum[:16])
	}
	return b.String()
}

// String encodes k unambiguously and stably (a storage key): each part is
// Go-quoted, so no choice of values can make two keys collide.
func (k Key) String() string {
	s := strconv.Quote(k.Cluster) + "/" + strconv.Quote(k.AuditID) + "/" + strconv.Quote(k.RequestReceived)
	if k.Place != "" {
		s += "/" + strconv.Quote(k.Place)
	}
	return s
}

// RecordID is the ID of the token_request record of k's request: a digest
// of k, the same on every retry and re-send.
func (k Key) RecordID() string {
	sum := sha256.Sum256([]byte(k.String()))
	return "tr-" + hex.EncodeToString(sum[:16])
}

// State is what is known about a request.
type State int

// States of a request.
const (
	// StateNone: nothing seen yet.
	StateNone State = iota
	// StatePending: a non-final stage was seen and is held for stage_grace.
	StatePending
	// StateDone: alerted from a final stage (ResponseComplete or Panic).
	StateDone
	// StateDoneAlone: a lone RequestReceived was alerted after stage_grace
	// with event.outcome=unknown; a completion arriving now is late.
	StateDoneAlone
)

func (s State) String() string {
	switch s {
	case StateNone:
		return "none"
	case StatePending:
		return "pending"
	case StateDone:
		return "done"
	case StateDoneAlone:
		return "done_alone"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Action is what to do with an event of a request in a given state.
type Action int

// Actions.
const (
	// ActionIgnore: a duplicate, or nothing to do.
	ActionIgnore Action = iota
	// ActionHold: store the event pending, with deadline now+stage_grace;
	// when the deadline passes, alert from it with unknownOutcome and move
	// to StateDoneAlone.
	ActionHold
	// ActionAlert: alert from this event now.
	ActionAlert
	// ActionDropLate: a completion after the lone RequestReceived was
	// already alerted: drop it and count it.
	ActionDropLate
)

func (a Action) String() string {
	switch a {
	case ActionIgnore:
		return "ignore"
	case ActionHold:
		return "hold"
	case ActionAlert:
		return "alert"
	case ActionDropLate:
		return "drop_late"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Next decides what an event at stage does to a request in state s. A
// stage that is not final (RequestReceived, ResponseStarted, or one this
// version does not know) is held, so that it still alerts if no completion
// comes.
func Next(s State, stage string) Action {
	final := audit.Final(stage)
	switch s {
	case StateNone:
		if final {
			return ActionAlert
		}
		return ActionHold
	case StatePending:
		if final {
			return ActionAlert
		}
		return ActionIgnore
	case StateDoneAlone:
		if final {
			return ActionDropLate
		}
		return ActionIgnore
	default: // StateDone
		return ActionIgnore
	}
}

// Decide is Next for event e: an Incomplete event is its own request and no
// other stage can join it, so it alerts at once whatever its stage (a
// RequestReceived with event.outcome=unknown) and is ignored when seen
// again.
func Decide(s State, e *audit.Event) Action {
	if !Incomplete(e) {
		return Next(s, e.Stage)
	}
	if s == StateNone {
		return ActionAlert
	}
	return ActionIgnore
}

// After returns the state of a request in state s once action a is applied.
func After(s State, a Action) State {
	switch a {
	case ActionHold:
		return StatePending
	case ActionAlert:
		return StateDone
	}
	return s
}

// Source is where an event came from: the agent's cluster and node.
type Source struct {
	Cluster string
	Node    string
}

// Contract constants of the seed rule.
const (
	RuleName      = "Kubernetes Service Account Token Created via TokenRequest API"
	RuleUUID      = "4df91789-7859-4bc4-9c5a-6b56bfa81a8b"
	RuleVersion   = "1"
	RuleReference = "https://attack.mitre.org/techniques/T1552/007/"
	RiskScore     = 47
)

// Outcomes (event.outcome).
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeUnknown = "unknown"
)

// Outcome is e's event.outcome: failure for a status code >= 400, success
// for a final stage with a lower code, unknown otherwise (no status yet).
func Outcome(e *audit.Event, unknownOutcome bool) string {
	if unknownOutcome || e.ResponseStatus == nil || e.ResponseStatus.Code == 0 {
		return OutcomeUnknown
	}
	if e.ResponseStatus.Code >= 400 {
		return OutcomeFailure
	}
	return OutcomeSuccess
}

// Time is the request's time: requestReceivedTimestamp, else
// stageTimestamp, else the zero time when neither parses.
func Time(e *audit.Event) time.Time {
	for _, s := range []string{e.RequestReceivedTimestamp, e.StageTimestamp} {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// TokenRecord builds the tokenwatch.token_request record for e, an event
// that alerts (v.Alerts()). unknownOutcome is true when a lone
// RequestReceived is alerted after the grace period. The record's ID
// depends only on the request's key, so re-sends produce the same ID.
// Nothing of the response body (the minted token) is read: Event does not
// hold it.
func TokenRecord(src Source, e *audit.Event, v rule.Verdict, unknownOutcome bool) alert.Record {
	var ns, name string
	if e.ObjectRef != nil {
		ns, name = e.ObjectRef.Namespace, e.ObjectRef.Name
	}
	outcome := Outcome(e, unknownOutcome)
	dryRun := e.DryRun()
	a := requestAttrs(src, e, ns, name)
	a = append(a, outcomeAttrs(e, outcome, unknownOutcome)...)
	a = append(a, mapAttrs(e)...)
	a = append(a, requestObjectAttrs(e.RequestObject)...)
	a = append(a, tokenwatchAttrs(e, v, dryRun)...)
	a = append(a, ruleAttrs()...)
	return alert.Record{
		ID:        KeyOf(src, e).RecordID(),
		EventName: alert.EventTokenRequest,
		Time:      Time(e),
		Severity:  alert.Medium,
		Body:      body(src, e, outcome, dryRun, ns, name),
		Attrs:     a,
	}
}

// requestAttrs are the record's attributes for where the request ran, what
// it asked for and who sent it, from where.
func requestAttrs(src Source, e *audit.Event, ns, name string) []alert.Attr {
	var groups []string
	if e.User != nil {
		groups = e.User.Groups
	}
	a := []alert.Attr{
		alert.String("k8s.cluster.name", src.Cluster),
		alert.String("k8s.node.name", src.Node),
		alert.String("kubernetes.audit.auditID", e.AuditID),
		alert.String("kubernetes.audit.stage", e.Stage),
		alert.String("kubernetes.audit.verb", e.Verb),
		alert.String("kubernetes.audit.requestURI", e.RequestURI),
		alert.String("kubernetes.audit.requestReceivedTimestamp", e.RequestReceivedTimestamp),
		alert.String("kubernetes.audit.objectRef.namespace", ns),
		alert.String("kubernetes.audit.objectRef.name", name),
		alert.String("k8s.namespace.name", ns),
		alert.String("user.name", e.Username()),
		alert.Strings("kubernetes.audit.user.groups", groups),
	}
	if e.ImpersonatedUser != nil {
		a = append(a, alert.String("kubernetes.audit.impersonatedUser.username", e.ImpersonatedUser.Username))
	}
	if ip := e.SourceIP(); ip != "" {
		a = append(a, alert.String("source.ip", ip))
	}
	return append(a,
		alert.Strings("kubernetes.audit.sourceIPs", e.SourceIPs),
		alert.String("user_agent.original", e.UserAgent),
	)
}

// outcomeAttrs are the response code, when it is known, and the outcome.
func outcomeAttrs(e *audit.Event, outcome string, unknownOutcome bool) []alert.Attr {
	var a []alert.Attr
	if e.ResponseStatus != nil && !unknownOutcome {
		a = append(a, alert.Int("kubernetes.audit.responseStatus.code", int64(e.ResponseStatus.Code)))
	}
	return append(a, alert.String("event.outcome", outcome))
}

// mapAttrs are the event's annotations and then its user's extra fields, one
// attribute each under a dedotted key; the first of two keys that dedot alike
// wins.
func mapAttrs(e *audit.Event) []alert.Attr {
	var a []alert.Attr
	seen := map[string]bool{}
	for _, k := range sortedKeys(e.Annotations) {
		key := "kubernetes.audit.annotations." + Dedot(k)
		if !seen[key] {
			seen[key] = true
			a = append(a, alert.String(key, e.Annotations[k]))
		}
	}
	if e.User != nil {
		for _, k := range sortedKeys(e.User.Extra) {
			key := "kubernetes.audit.user.extra." + Dedot(k)
			if !seen[key] {
				seen[key] = true
				a = append(a, alert.Strings(key, e.User.Extra[k]))
			}
		}
	}
	return a
}

// requestObjectAttrs are the TokenRequest's spec fields, none when the event
// carries no request object.
func requestObjectAttrs(ro *audit.TokenRequest) []alert.Attr {
	if ro == nil {
		return nil
	}
	spec := ro.Spec
	a := []alert.Attr{alert.Strings("kubernetes.audit.requestObject.spec.audiences", spec.Audiences)}
	if spec.ExpirationSeconds != nil {
		a = append(a, alert.Int("kubernetes.audit.requestObject.spec.expirationSeconds", *spec.ExpirationSeconds))
	}
	if b := spec.BoundObjectRef; b != nil {
		a = append(a,
			alert.String("kubernetes.audit.requestObject.spec.boundObjectRef.kind", b.Kind),
			alert.String("kubernetes.audit.requestObject.spec.boundObjectRef.name", b.Name),
		)
	}
	return a
}

// tokenwatchAttrs are tokenwatch's own findings about the event: dry run, an
// exclusion that did not match, truncated, malformed or missing parts.
func tokenwatchAttrs(e *audit.Event, v rule.Verdict, dryRun bool) []alert.Attr {
	a := []alert.Attr{alert.Bool("tokenwatch.dry_run", dryRun)}
	if v.Mismatch != "" {
		a = append(a, alert.String("tokenwatch.exclusion.mismatch", v.Mismatch))
	}
	if len(e.Truncated) > 0 {
		a = append(a, alert.Strings("tokenwatch.truncated", e.Truncated))
	}
	if len(e.Malformed) > 0 {
		a = append(a, alert.Strings("tokenwatch.malformed_fields", e.Malformed))
	}
	if Incomplete(e) {
		a = append(a, alert.Bool("tokenwatch.incomplete_event", true))
		if o := e.Origin; o != nil {
			a = append(a, alert.String("log.file.name", o.File), alert.Int("tokenwatch.file.offset", int64(min(o.Offset, math.MaxInt64))))
		}
	}
	return a
}

// ruleAttrs name the detection rule and the technique it detects.
func ruleAttrs() []alert.Attr {
	return []alert.Attr{
		alert.String("security_rule.name", RuleName),
		alert.String("security_rule.uuid", RuleUUID),
		alert.String("security_rule.version", RuleVersion),
		alert.String("security_rule.reference", RuleReference),
		alert.Int("event.risk_score", RiskScore),
		alert.String("threat.tactic.id", "TA0006"),
		alert.String("threat.tactic.name", "Credential Access"),
		alert.String("threat.technique.id", "T1552"),
		alert.String("threat.technique.subtechnique.id", "T1552.007"),
	}
}

// body is one human sentence: who minted (or tried to) a token for which
// service account in which cluster, from where.
func body(src Source, e *audit.Event, outcome string, dryRun bool, ns, name string) string {
	var b strings.Builder
	b.WriteString(orUnknown(e.Username()))
	if e.ImpersonatedUser != nil {
		fmt.Fprintf(&b, " (impersonating %s)", orUnknown(e.ImpersonatedUser.Username))
	}
	switch {
	case outcome == OutcomeFailure:
		fmt.Fprintf(&b, " tried to mint a token (denied, %d)", e.ResponseStatus.Code)
	case outcome == OutcomeUnknown:
		b.WriteString(" requested a token (outcome unknown)")
	case dryRun:
		b.WriteString(" minted a token in a dry run")
	default:
		b.WriteString(" minted a token")
	}
	fmt.Fprintf(&b, " for service account %s/%s in cluster %s", orUnknown(ns), orUnknown(name), orUnknown(src.Cluster))
	if ip := e.SourceIP(); ip != "" {
		fmt.Fprintf(&b, " from %s", ip)
	}
	if dryRun && outcome != OutcomeSuccess {
		b.WriteString(" (dry run)")
	}
	b.WriteString(".")
	return b.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// Dedot replaces the dots of a map key with '_', as Elastic's pipeline names
// annotation and user-extra keys.
func Dedot(k string) string { return strings.ReplaceAll(k, ".", "_") }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
