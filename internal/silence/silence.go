package silence

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// Reasons (tokenwatch.silence.reason).
const (
	ReasonNoHeartbeat   = "no_heartbeat"
	ReasonNoAuditGrowth = "no_audit_growth"
	ReasonNoAuditData   = "no_audit_data"
	// ReasonAuditLogNotJSON: the agent says its audit log's lines are not
	// JSON audit events (--audit-log-format=legacy): it grows, and nothing
	// in it can be matched.
	ReasonAuditLogNotJSON = "audit_log_not_json"
	// ReasonNoTokenRequests is a whole cluster's: its audit logs grow, yet
	// none of its nodes has logged a token request for TokenRequestsAfter.
	ReasonNoTokenRequests = "no_token_requests"
)

// FileState is what an agent says of its live audit log.
type FileState int

// File states.
const (
	// FileUnknown: the agent does not say (an older agent), or this is not
	// a heartbeat; what was known stays.
	FileUnknown FileState = iota
	// FilePresent: the file exists and can be read.
	FilePresent
	// FileMissing: the file is absent or unreadable.
	FileMissing
)

// Format is what an agent says of its audit log's newest lines.
type Format int

// Formats.
const (
	// FormatUnknown: this is not a heartbeat; what was known stays.
	FormatUnknown Format = iota
	// FormatJSON: JSON audit events, or the agent does not say (an older
	// agent).
	FormatJSON
	// FormatNotJSON: not JSON audit events (--audit-log-format=legacy).
	FormatNotJSON
)

// maxFileError bounds the agent's explanation kept for a record body.
const maxFileError = 256

// Beat is what one heartbeat says about a node's audit log.
type Beat struct {
	// LastGrowth is the agent's clock when its audit log last grew, zero
	// when nothing was read since the agent started.
	LastGrowth time.Time
	File       FileState
	FileError  string // why the file is missing
	// Format is what the agent says of its audit log's format, FormatErr
	// why it is not JSON.
	Format    Format
	FormatErr string
	// Policy is what the agent says of the audit policy file it watches.
	Policy Policy
	// RotationBytes is the size at which the node's kube-apiserver rotates
	// its audit log, as the agent infers it (0: unknown).
	RotationBytes int64
}

// KindNodesRefused is the tokenwatch.pipeline.kind of the record that
// reports node names refused because their cluster had MaxNodesPerCluster.
const KindNodesRefused = "nodes_refused"

// maxRefusedNames bounds the names one nodes_refused record lists.
const maxRefusedNames = 10

// Config is the configuration file's silence section, with the node bound
// of its limits section.
type Config struct {
	// After is how long without a heartbeat, or without audit data growth,
	// makes a node silent. <= 0 turns silence detection off.
	After time.Duration `yaml:"after"`
	// MaxNodesPerCluster bounds the nodes tracked per cluster: a node name
	// beyond it is refused (Join) and reported (<= 0: no bound). The file
	// sets it in its limits section (limits.max_nodes_per_cluster).
	MaxNodesPerCluster int `yaml:"-"`
	// ForgetAfter is how long a node stays tracked after its no-heartbeat
	// cluster_silent: then it is forgotten, freeing its place in the bound
	// (<= 0: never).
	ForgetAfter time.Duration `yaml:"forget_after"`
	// ExpectedNodes is, per cluster, how many control-plane nodes (one
	// kube-apiserver and agent each) it has: a cluster with fewer nodes
	// tracked for After is silent with ReasonNodesMissing, so an apiserver
	// that no agent watches is reported. Absent clusters are not checked.
	ExpectedNodes map[string]int `yaml:"expected_nodes"`
	// TokenRequestsAfter is how long a cluster whose audit logs grow may go
	// without any token request (a create on serviceaccounts/token, excluded
	// or not) in them before it is silent with ReasonNoTokenRequests: its
	// audit policy likely does not log them. <= 0 turns this check off.
	TokenRequestsAfter time.Duration `yaml:"token_requests_after"`
}

// Tracker follows (cluster, node) pairs. It is not safe for concurrent use.
// What it holds is bounded by clusters times MaxNodesPerCluster: node names
// are chosen by whoever holds a cluster's certificate, so a cluster's nodes
// are a count, not a list.
type Tracker struct {
	cfg      Config
	nodes    map[node]*state
	clusters map[string]int       // tracked nodes per cluster
	refused  map[string]*refusals // per cluster, not yet reported
	reported map[string]time.Time // per cluster: the last nodes_refused
	tokens   map[string]*tokens   // per tracked cluster: its token requests
	// baselines are the audit policy baselines restored from the store (see
	// RestoreBaselines) for nodes not heard since; baselineLog the changes
	// of baselines to store, in order (see Baselines).
	baselines   map[node]Policy
	restoredAt  time.Time
	baselineLog []Baseline
	// short are the clusters of ExpectedNodes seen with fewer nodes.
	short map[string]*shortage
}

// tokens is what a cluster's audit logs said of token requests.
type tokens struct {
	// seen is when the last token request arrived (aggregator clock), or
	// when the cluster began to be tracked, if none has since.
	seen time.Time
	// silent is set while a no_token_requests cluster_silent has been
	// emitted and not resumed: since is the seen it was emitted for.
	silent bool
	since  time.Time
}

// refusals are the node names refused in one cluster since its last
// nodes_refused record.
type refusals struct {
	first time.Time
	count int
	names []string // the first maxRefusedNames
}

type node struct{ cluster, name string }

// less orders nodes by cluster, then name.
func (n node) less(o node) bool {
	if n.cluster != o.cluster {
		return n.cluster < o.cluster
	}
	return n.name < o.name
}

type state struct {
	heard time.Time // aggregator clock: the last heartbeat
	// growth is when the audit log last grew, on the aggregator's clock
	// (zero: unknown). The agent's own timestamp is used only to notice a
	// change, so clock skew between agent and aggregator does not matter.
	growth     time.Time
	agentGrown time.Time // the agent's last reported value, to notice changes
	// missing is when the agent first said its audit log was absent or
	// unreadable, without saying since that it is present (zero: it did
	// not say so); fileErr is its last explanation.
	missing time.Time
	fileErr string
	// notJSON is when the agent first said its audit log's lines are not
	// JSON, without saying since that they are (zero: it did not say so);
	// formatErr is its last explanation.
	notJSON   time.Time
	formatErr string
	// policy is the audit policy file as last heard, policyBase as it was
	// at the last audit_policy_changed (or when first heard), policyAt the
	// time of that record.
	policy, policyBase Policy
	policyAt           time.Time
	// rotation is the audit log's rotation size as last heard (0:
	// unknown), rotationRep the size at the last audit_log_rotation_small
	// (or the last safe size), rotationAt the time of that record.
	rotation, rotationRep int64
	rotationAt            time.Time
	// silent is set while a cluster_silent has been emitted and not
	// resumed: since is when the silence began.
	silent bool
	reason string
	since  time.Time
}

// New returns a tracker for cfg.
func New(cfg Config) *Tracker {
	return &Tracker{cfg: cfg, nodes: map[node]*state{}, clusters: map[string]int{},
		refused: map[string]*refusals{}, reported: map[string]time.Time{}, tokens: map[string]*tokens{},
		short: map[string]*shortage{}}
}

// SetConfig applies cfg from now on, keeping what is tracked (a reload).
func (t *Tracker) SetConfig(cfg Config) { t.cfg = cfg }

// Join starts tracking cluster/name at now, as if heard then, and reports
// whether it is tracked: a node already tracked is; a new one only while
// its cluster has fewer than MaxNodesPerCluster nodes. A refusal is counted
// for the cluster's next nodes_refused record.
func (t *Tracker) Join(now time.Time, cluster, name string) bool {
	return t.join(now, cluster, name, true)
}

// join is Join; report says whether a refusal is counted.
func (t *Tracker) join(now time.Time, cluster, name string, report bool) bool {
	k := node{cluster, name}
	if t.nodes[k] != nil {
		return true
	}
	if max := t.cfg.MaxNodesPerCluster; max > 0 && t.clusters[cluster] >= max {
		if !report {
			return false
		}
		r := t.refused[cluster]
		if r == nil {
			r = &refusals{first: now}
			t.refused[cluster] = r
		}
		r.count++
		if len(r.names) < maxRefusedNames && !contains(r.names, name) {
			r.names = append(r.names, name)
		}
		return false
	}
	t.nodes[k] = &state{heard: now, policyBase: t.baselines[k]}
	delete(t.baselines, k)
	t.clusters[cluster]++
	if t.tokens[cluster] == nil {
		t.tokens[cluster] = &tokens{seen: now}
	}
	return true
}

// TokenRequests records that a live (not replaying) agent of cluster
// delivered token requests at now. A cluster with no tracked node is
// ignored.
func (t *Tracker) TokenRequests(now time.Time, cluster string) {
	if c := t.tokens[cluster]; c != nil && now.After(c.seen) {
		c.seen = now
	}
}

func contains(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// Heard records a heartbeat from cluster/node at now (the aggregator's
// clock). lastGrowth is the agent's clock when its audit log last grew, zero
// when unknown. Only changes of that value count: the first value, and any
// later one newer than the newest so far, is growth seen at now. So the
// agent's clock never has to agree with the aggregator's, and a node whose
// log had not grown for a while before the aggregator (re)started is flagged
// After from then.
//
// A node not tracked (forgotten, or the tracker is new) is joined first;
// when its cluster is full the heartbeat is ignored (its stream's Join was
// refused, or it was forgotten while silent and its cluster filled since).
func (t *Tracker) Heard(now time.Time, cluster, name string, lastGrowth time.Time) {
	t.HeardBeat(now, cluster, name, Beat{LastGrowth: lastGrowth})
}

// HeardBeat is Heard with what the heartbeat says of the audit log's file.
// A node whose agent says the file is absent or unreadable, and that reads
// nothing, is silent with ReasonNoAuditData After from the first such
// heartbeat, however regular its heartbeats. One whose file is present but
// from which nothing was read since its agent started is silent with
// ReasonNoAuditGrowth After from the first heartbeat saying it is present.
func (t *Tracker) HeardBeat(now time.Time, cluster, name string, b Beat) {
	lastGrowth := b.LastGrowth
	k := node{cluster, name}
	s := t.nodes[k]
	if s == nil {
		if !t.join(now, cluster, name, false) {
			return
		}
		s = t.nodes[k]
	}
	if !lastGrowth.IsZero() {
		if s.agentGrown.IsZero() || lastGrowth.After(s.agentGrown) {
			s.growth = now
			s.agentGrown = lastGrowth
		}
	}
	switch b.File {
	case FileMissing:
		if s.missing.IsZero() {
			s.missing = now
		}
		s.fileErr = b.FileError
		if len(s.fileErr) > maxFileError {
			s.fileErr = s.fileErr[:maxFileError] + "..."
		}
	case FilePresent:
		s.missing = time.Time{}
		if s.growth.IsZero() {
			s.growth = now // nothing read yet: growth is awaited from now
		}
	}
	s.heardFormat(now, b.Format, b.FormatErr)
	s.heardPolicy(b.Policy)
	s.heardRotation(b.RotationBytes)
	if now.After(s.heard) {
		s.heard = now
	}
}

// heardFormat takes what a heartbeat says of the audit log's format.
func (s *state) heardFormat(now time.Time, f Format, fault string) {
	switch f {
	case FormatUnknown:
		return
	case FormatJSON:
		s.notJSON, s.formatErr = time.Time{}, ""
		return
	}
	if s.notJSON.IsZero() {
		s.notJSON = now
	}
	if len(fault) > maxFileError {
		fault = fault[:maxFileError] + "..."
	}
	s.formatErr = fault
}

// Forget stops tracking cluster/node (a replaying agent, a node removed on
// purpose). No record says so.
func (t *Tracker) Forget(cluster, name string) {
	k := node{cluster, name}
	if t.nodes[k] == nil {
		return
	}
	if t.nodes[k].policyBase.Known() {
		t.baselineLog = append(t.baselineLog, Baseline{Cluster: cluster, Node: name})
	}
	delete(t.nodes, k)
	if t.clusters[cluster]--; t.clusters[cluster] <= 0 {
		delete(t.clusters, cluster)
		delete(t.tokens, cluster)
	}
}

// Nodes returns how many nodes are tracked.
func (t *Tracker) Nodes() int { return len(t.nodes) }

// Check returns the records due at now: cluster_silent for a node silent for
// After (once per silence) and cluster_resumed for a silent node heard from
// again, in (cluster, node) order, then audit_policy_changed for nodes whose
// audit policy file changed (see policyRecords), then nodes_refused for clusters that
// refused node names (at most one per cluster per After), then the clusters
// silent or resumed for ReasonNoTokenRequests (see tokenRecords). Nodes silent
// without heartbeat for ForgetAfter since their cluster_silent are
// forgotten.
func (t *Tracker) Check(now time.Time) []alert.Record {
	if t.cfg.After <= 0 {
		return nil
	}
	defer t.forget(now)
	keys := make([]node, 0, len(t.nodes))
	for k := range t.nodes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].less(keys[j]) })
	var out []alert.Record
	for _, k := range keys {
		s := t.nodes[k]
		reason, since := t.silence(now, s)
		switch {
		case reason != "" && !s.silent:
			s.silent, s.reason, s.since = true, reason, since
			out = append(out, t.record("cluster_silent", k, s, now, now.Sub(since)))
		case reason == "" && s.silent:
			back := s.heard
			switch {
			case s.reason == ReasonNoAuditGrowth && s.growth.After(back):
				back = s.growth
			case s.reason == ReasonNoAuditData, s.reason == ReasonAuditLogNotJSON:
				back = now
			}
			out = append(out, t.record("cluster_resumed", k, s, now, back.Sub(s.since)))
			s.silent = false
		}
	}
	out = append(out, t.policyRecords(now, keys)...)
	out = append(out, t.rotationRecords(now, keys)...)
	out = append(out, t.refusedRecords(now)...)
	out = append(out, t.tokenRecords(now)...)
	return append(out, t.expectedRecords(now)...)
}

// tokenRecords returns, in cluster order, a cluster_silent for each cluster
// without a token request for TokenRequestsAfter while at least one of its
// nodes is not silent (its audit log grows: when all are silent, their own
// records say why nothing comes), and a cluster_resumed for each such
// cluster that delivered one since.
func (t *Tracker) tokenRecords(now time.Time) []alert.Record {
	if t.cfg.TokenRequestsAfter <= 0 {
		return nil
	}
	flowing := map[string]bool{}
	for k, s := range t.nodes {
		if !s.silent {
			flowing[k.cluster] = true
		}
	}
	clusters := make([]string, 0, len(t.tokens))
	for c := range t.tokens {
		clusters = append(clusters, c)
	}
	sort.Strings(clusters)
	var out []alert.Record
	for _, c := range clusters {
		tk := t.tokens[c]
		switch {
		case !tk.silent && now.Sub(tk.seen) >= t.cfg.TokenRequestsAfter && flowing[c]:
			tk.silent, tk.since = true, tk.seen
			out = append(out, tokenRecord("cluster_silent", c, tk.since, now, now.Sub(tk.since)))
		case tk.silent && tk.seen.After(tk.since):
			tk.silent = false
			out = append(out, tokenRecord("cluster_resumed", c, tk.since, now, tk.seen.Sub(tk.since)))
		}
	}
	return out
}

// tokenRecord is a no_token_requests record of cluster, silent since since.
func tokenRecord(kind, cluster string, since, now time.Time, silentFor time.Duration) alert.Record {
	body := fmt.Sprintf("Cluster %s is silent: its audit logs grow, but none has logged a token request (create on serviceaccounts/token) for %s; its audit policy may not log them (or the apiserver writes another format than --audit-log-format=json), and tokenwatch cannot see them.",
		cluster, silentFor.Round(time.Second))
	if kind != "cluster_silent" {
		body = fmt.Sprintf("Cluster %s logs token requests again after %s without any.", cluster, silentFor.Round(time.Second))
	}
	return silenceRecord(kind, cluster, "", ReasonNoTokenRequests, since, now, silentFor, body)
}

// forget drops the nodes silent without heartbeat for ForgetAfter since
// their cluster_silent, and report times older than After.
func (t *Tracker) forget(now time.Time) {
	for c, at := range t.reported {
		if now.Sub(at) >= t.cfg.After {
			delete(t.reported, c)
		}
	}
	if t.cfg.ForgetAfter <= 0 {
		return
	}
	t.forgetBaselines(now)
	for k, s := range t.nodes {
		if s.silent && s.reason == ReasonNoHeartbeat && now.Sub(s.since) >= t.cfg.After+t.cfg.ForgetAfter {
			t.Forget(k.cluster, k.name)
		}
	}
}

// refusedRecords returns the nodes_refused records due at now, in cluster
// order: one per cluster with refusals, at most one per After.
func (t *Tracker) refusedRecords(now time.Time) []alert.Record {
	var clusters []string
	for c := range t.refused {
		if last, ok := t.reported[c]; !ok || now.Sub(last) >= t.cfg.After {
			clusters = append(clusters, c)
		}
	}
	sort.Strings(clusters)
	out := make([]alert.Record, 0, len(clusters))
	for _, c := range clusters {
		r := t.refused[c]
		delete(t.refused, c)
		t.reported[c] = now
		out = append(out, alert.Record{
			ID:        alert.PipelineID(KindNodesRefused + "\x00" + c + "\x00" + r.first.UTC().Format(time.RFC3339Nano)),
			EventName: alert.EventPipeline,
			Time:      now,
			Severity:  alert.High,
			Body: fmt.Sprintf("Cluster %s: %d agent stream(s) for new node names were refused, the cluster already has %d nodes (limits.max_nodes_per_cluster); names: %s.",
				c, r.count, t.cfg.MaxNodesPerCluster, strings.Join(r.names, ", ")),
			Attrs: []alert.Attr{
				alert.String("tokenwatch.pipeline.kind", KindNodesRefused),
				alert.String("k8s.cluster.name", c),
				alert.Int("tokenwatch.nodes.refused", int64(r.count)),
				alert.Strings("tokenwatch.nodes.refused_names", r.names),
				alert.Int("tokenwatch.nodes.max", int64(t.cfg.MaxNodesPerCluster)),
			},
		})
	}
	return out
}

// silence returns why s is silent at now and since when, "" when it is not.
func (t *Tracker) silence(now time.Time, s *state) (string, time.Time) {
	if now.Sub(s.heard) >= t.cfg.After {
		return ReasonNoHeartbeat, s.heard
	}
	if !s.missing.IsZero() {
		since := s.missing
		if s.growth.After(since) {
			since = s.growth // read meanwhile (rotated files)
		}
		if now.Sub(since) >= t.cfg.After {
			return ReasonNoAuditData, since
		}
	}
	if !s.notJSON.IsZero() && now.Sub(s.notJSON) >= t.cfg.After {
		return ReasonAuditLogNotJSON, s.notJSON
	}
	if !s.growth.IsZero() && now.Sub(s.growth) >= t.cfg.After {
		return ReasonNoAuditGrowth, s.growth
	}
	return "", time.Time{}
}

func (t *Tracker) record(kind string, k node, s *state, now time.Time, silentFor time.Duration) alert.Record {
	what := "no heartbeat from its agent"
	switch s.reason {
	case ReasonNoAuditGrowth:
		what = "its audit log has not grown"
	case ReasonNoAuditData:
		what = "its agent reads nothing, its audit log is absent or unreadable (" + s.fileErr + ")"
	case ReasonAuditLogNotJSON:
		what = "its audit log grows but is not JSON: " + s.formatErr
	}
	body := fmt.Sprintf("Node %s of cluster %s is silent: %s for %s.", k.name, k.cluster, what, silentFor.Round(time.Second))
	if kind != "cluster_silent" {
		body = fmt.Sprintf("Node %s of cluster %s is heard from again after %s of silence (%s).", k.name, k.cluster, silentFor.Round(time.Second), what)
	}
	return silenceRecord(kind, k.cluster, k.name, s.reason, s.since, now, silentFor, body)
}

// silenceRecord is a cluster_silent (high) or cluster_resumed (low) record
// of a node, or of a whole cluster when node is "", silent since since for
// reason. Its ID is the same for the same silence.
func silenceRecord(kind, cluster, node, reason string, since, now time.Time, silentFor time.Duration, body string) alert.Record {
	key := kind + "\x00" + cluster + "\x00" + node + "\x00"
	if node == "" {
		key += "\x00" + reason + "\x00"
	}
	sev := alert.High
	if kind != "cluster_silent" {
		sev = alert.Low
	}
	attrs := []alert.Attr{alert.String("tokenwatch.pipeline.kind", kind), alert.String("k8s.cluster.name", cluster)}
	if node != "" {
		attrs = append(attrs, alert.String("k8s.node.name", node))
	}
	return alert.Record{
		ID:        alert.PipelineID(key + since.UTC().Format(time.RFC3339Nano)),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  sev,
		Body:      body,
		Attrs: append(attrs,
			alert.Int("tokenwatch.silent_for_seconds", int64(silentFor/time.Second)),
			alert.String("tokenwatch.silence.reason", reason)),
	}
}
