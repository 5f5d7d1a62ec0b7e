package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

// Event names and rule constants of the contract.
const (
	EventTokenRequest = "tokenwatch.token_request"
	EventCorrelation  = "tokenwatch.correlation"
	EventPipeline     = "tokenwatch.pipeline"
	RuleUUID          = "4df91789-7859-4bc4-9c5a-6b56bfa81a8b"
)

// Want is one request that must alert: the shape genaudit -expect writes.
type Want struct {
	Cluster                  string `json:"cluster,omitempty"`
	AuditID                  string `json:"auditID"`
	RequestReceivedTimestamp string `json:"requestReceivedTimestamp"`
	User                     string `json:"user"`
	Namespace                string `json:"namespace"`
	Name                     string `json:"name"`
	Outcome                  string `json:"outcome"`
	DryRun                   bool   `json:"dryRun,omitempty"`
	// Chain: the request was made with a watched token (one minted by an
	// alerting request), so it alerts at high / 17 with the chain attributes
	// (docs/CONTRACT.md "Token lineage").
	Chain bool `json:"chain,omitempty"`
}

// Key identifies a request as the contract does.
type Key struct{ Cluster, AuditID, Received string }

func (k Key) String() string { return k.Cluster + "/" + k.AuditID + "@" + k.Received }

// LoadWants reads a genaudit -expect file; cluster fills entries without one.
func LoadWants(t testing.TB, path, cluster string) []Want {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read expected alerts: %v", err)
	}
	var ws []Want
	if err := json.Unmarshal(b, &ws); err != nil {
		t.Fatalf("decode expected alerts %s: %v", path, err)
	}
	for i := range ws {
		if ws[i].Cluster == "" {
			ws[i].Cluster = cluster
		}
	}
	return ws
}

// RecordKey is the request key of a token_request record.
func RecordKey(r Record) Key {
	return Key{r.Str("k8s.cluster.name"), r.Str("kubernetes.audit.auditID"), r.Str("kubernetes.audit.requestReceivedTimestamp")}
}

// Result compares received token_request records with the expected set.
type Result struct {
	Want, Got   int
	Missing     []Key
	Unexpected  []Key
	Duplicates  map[Key]int // key -> extra copies
	Mismatches  []string    // attribute differences
	DupeRecords int
}

// OK reports an exact match: nothing missing, unexpected, doubled or wrong.
func (r Result) OK() bool {
	return len(r.Missing) == 0 && len(r.Unexpected) == 0 && len(r.Duplicates) == 0 && len(r.Mismatches) == 0
}

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "expected %d, received %d (distinct %d, duplicate records %d)", r.Want, r.Got, r.Got-r.DupeRecords, r.DupeRecords)
	list := func(name string, ks []Key) {
		if len(ks) == 0 {
			return
		}
		sort.Slice(ks, func(i, j int) bool { return ks[i].String() < ks[j].String() })
		n := len(ks)
		if n > 10 {
			ks = ks[:10]
		}
		fmt.Fprintf(&b, "\n  %s (%d): %v", name, n, ks)
	}
	list("missing", r.Missing)
	list("unexpected", r.Unexpected)
	var dup []Key
	for k := range r.Duplicates {
		dup = append(dup, k)
	}
	list("doubled", dup)
	for i, m := range r.Mismatches {
		if i == 10 {
			fmt.Fprintf(&b, "\n  ... %d more mismatches", len(r.Mismatches)-10)
			break
		}
		fmt.Fprintf(&b, "\n  %s", m)
	}
	return b.String()
}

// Compare matches the token_request records among recs against wants. A
// want without RequestReceivedTimestamp (a client-side view, where the
// apiserver assigned a unique auditID) matches on cluster and auditID.
func Compare(recs []Record, wants []Want) Result {
	res := Result{Want: len(wants), Duplicates: map[Key]int{}}
	want := map[Key]Want{}
	for _, w := range wants {
		want[Key{w.Cluster, w.AuditID, w.RequestReceivedTimestamp}] = w
	}
	seen := map[Key]int{}
	for _, r := range ByEvent(recs, EventTokenRequest) {
		res.Got++
		k := normalize(RecordKey(r), want)
		seen[k]++
		if seen[k] > 1 {
			res.Duplicates[k]++
			res.DupeRecords++
			continue
		}
		w, ok := want[k]
		if !ok {
			res.Unexpected = append(res.Unexpected, k)
			continue
		}
		for _, m := range CheckTokenRecord(r, w) {
			res.Mismatches = append(res.Mismatches, k.String()+": "+m)
		}
	}
	for k := range want {
		if seen[k] == 0 {
			res.Missing = append(res.Missing, k)
		}
	}
	return res
}

// requiredAttrs are present on every token_request record.
var requiredAttrs = []string{
	"k8s.cluster.name", "k8s.node.name", "kubernetes.audit.auditID", "kubernetes.audit.stage",
	"kubernetes.audit.verb", "kubernetes.audit.requestURI", "kubernetes.audit.requestReceivedTimestamp",
	"kubernetes.audit.objectRef.namespace", "kubernetes.audit.objectRef.name", "k8s.namespace.name",
	"user.name", "kubernetes.audit.user.groups", "source.ip", "kubernetes.audit.sourceIPs",
	"user_agent.original", "event.outcome", "tokenwatch.dry_run",
	"security_rule.name", "security_rule.uuid", "security_rule.version", "security_rule.reference",
	"event.risk_score", "threat.tactic.id", "threat.tactic.name", "threat.technique.id",
	"threat.technique.subtechnique.id",
}

// CheckTokenRecord returns how r differs from the contract and from w.
func CheckTokenRecord(r Record, w Want) []string {
	var bad []string
	for _, k := range requiredAttrs {
		if _, ok := r.Attrs[k]; !ok {
			bad = append(bad, "missing attribute "+k)
		}
	}
	eq := func(key, got, want string) {
		if want != "" && got != want {
			bad = append(bad, fmt.Sprintf("%s = %q, want %q", key, got, want))
		}
	}
	eq("user.name", r.Str("user.name"), w.User)
	eq("kubernetes.audit.objectRef.namespace", r.Str("kubernetes.audit.objectRef.namespace"), w.Namespace)
	eq("kubernetes.audit.objectRef.name", r.Str("kubernetes.audit.objectRef.name"), w.Name)
	eq("event.outcome", r.Str("event.outcome"), w.Outcome)
	eq("kubernetes.audit.verb", r.Str("kubernetes.audit.verb"), "create")
	eq("security_rule.uuid", r.Str("security_rule.uuid"), RuleUUID)
	eq("threat.technique.subtechnique.id", r.Str("threat.technique.subtechnique.id"), "T1552.007")
	if dr, _ := r.Attrs["tokenwatch.dry_run"].(bool); dr != w.DryRun {
		bad = append(bad, fmt.Sprintf("tokenwatch.dry_run = %v, want %v", dr, w.DryRun))
	}
	wantText, wantNumber := "medium", 13
	if w.Chain {
		wantText, wantNumber = "high", 17
		if r.Str("tokenwatch.lineage.parent_jti") == "" {
			bad = append(bad, "missing attribute tokenwatch.lineage.parent_jti (a chain)")
		}
	}
	if r.SeverityText != wantText || r.SeverityNumber != wantNumber {
		bad = append(bad, fmt.Sprintf("severity = %s/%d, want %s/%d", r.SeverityText, r.SeverityNumber, wantText, wantNumber))
	}
	if r.Resource["service.name"] != "tokenwatch-aggregator" {
		bad = append(bad, fmt.Sprintf("resource service.name = %v, want tokenwatch-aggregator", r.Resource["service.name"]))
	}
	if r.Body == "" {
		bad = append(bad, "empty body")
	}
	if ips, ok := r.Attrs["kubernetes.audit.sourceIPs"].([]any); ok && len(ips) > 0 {
		if last, _ := ips[len(ips)-1].(string); last != r.Str("source.ip") {
			bad = append(bad, fmt.Sprintf("source.ip = %q, want the last sourceIPs entry %q", r.Str("source.ip"), last))
		}
	}
	return bad
}

// Report logs the scenario's counts (the line CI logs are read for) and
// fails the test unless the match is exact.
func Report(t testing.TB, scenario string, res Result) {
	t.Helper()
	t.Logf("scenario %s: %s", scenario, res)
	if !res.OK() {
		t.Errorf("scenario %s: alerts differ from the expected set: %s", scenario, res)
	}
}

func normalize[V any](k Key, want map[Key]V) Key {
	if _, ok := want[k]; ok {
		return k
	}
	loose := Key{k.Cluster, k.AuditID, ""}
	if _, ok := want[loose]; ok {
		return loose
	}
	return k
}

// KeysOf returns the request keys of wants.
func KeysOf(wants []Want) map[Key]bool {
	m := map[Key]bool{}
	for _, w := range wants {
		m[Key{w.Cluster, w.AuditID, w.RequestReceivedTimestamp}] = true
	}
	return m
}

// CountDistinct returns how many distinct expected keys have arrived.
func CountDistinct(recs []Record, want map[Key]bool) int {
	seen := map[Key]bool{}
	for _, r := range ByEvent(recs, EventTokenRequest) {
		if k := normalize(RecordKey(r), want); want[k] {
			seen[k] = true
		}
	}
	return len(seen)
}
