package detect

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/rule"
)

func TestNext(t *testing.T) {
	tests := []struct {
		state State
		stage string
		want  Action
		after State
	}{
		{StateNone, audit.StageRequestReceived, ActionHold, StatePending},
		{StateNone, audit.StageResponseStarted, ActionHold, StatePending},
		{StateNone, "SomethingNew", ActionHold, StatePending},
		{StateNone, "", ActionHold, StatePending},
		{StateNone, audit.StageResponseComplete, ActionAlert, StateDone},
		{StateNone, audit.StagePanic, ActionAlert, StateDone},
		{StatePending, audit.StageRequestReceived, ActionIgnore, StatePending},
		{StatePending, audit.StageResponseStarted, ActionIgnore, StatePending},
		{StatePending, audit.StageResponseComplete, ActionAlert, StateDone},
		{StatePending, audit.StagePanic, ActionAlert, StateDone},
		{StateDone, audit.StageRequestReceived, ActionIgnore, StateDone},
		{StateDone, audit.StageResponseComplete, ActionIgnore, StateDone},
		{StateDone, audit.StagePanic, ActionIgnore, StateDone},
		{StateDoneAlone, audit.StageRequestReceived, ActionIgnore, StateDoneAlone},
		{StateDoneAlone, audit.StageResponseComplete, ActionDropLate, StateDoneAlone},
		{StateDoneAlone, audit.StagePanic, ActionDropLate, StateDoneAlone},
	}
	for _, tt := range tests {
		got := Next(tt.state, tt.stage)
		if got != tt.want {
			t.Errorf("Next(%v, %q) = %v, want %v", tt.state, tt.stage, got, tt.want)
		}
		if after := After(tt.state, got); after != tt.after {
			t.Errorf("After(%v, %v) = %v, want %v", tt.state, got, after, tt.after)
		}
	}
}

// run feeds events of one cluster through Next and returns the records, with
// every still-pending request alerted alone at the end (its grace expired).
type run struct {
	src     Source
	rule    *rule.Rule
	state   map[Key]State
	pending map[Key]*audit.Event
	order   []Key
	records []alert.Record
	late    int
}

func newRun(t *testing.T, cfg rule.Config) *run {
	r, err := rule.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &run{src: Source{Cluster: "prod", Node: "cp-1"}, rule: r, state: map[Key]State{}, pending: map[Key]*audit.Event{}}
}

func (r *run) feed(e *audit.Event) {
	v := r.rule.Evaluate(e)
	if !v.Alerts() {
		return
	}
	k := KeyOf(r.src, e)
	s := r.state[k]
	a := Next(s, e.Stage)
	switch a {
	case ActionHold:
		r.pending[k] = e
		r.order = append(r.order, k)
	case ActionAlert:
		delete(r.pending, k)
		r.records = append(r.records, TokenRecord(r.src, e, v, false))
	case ActionDropLate:
		r.late++
	}
	r.state[k] = After(s, a)
}

func (r *run) expire() {
	for _, k := range r.order {
		if e, ok := r.pending[k]; ok && r.state[k] == StatePending {
			r.records = append(r.records, TokenRecord(r.src, e, r.rule.Evaluate(e), true))
			r.state[k] = StateDoneAlone
			delete(r.pending, k)
		}
	}
	r.order = nil
}

func ev(user, stage, id, rrt string, code int32) *audit.Event {
	e := &audit.Event{
		AuditID: id, Stage: stage, Verb: "create", RequestReceivedTimestamp: rrt,
		RequestURI: "/api/v1/namespaces/team-a/serviceaccounts/app/token",
		User:       &audit.UserInfo{Username: user, Groups: []string{"system:authenticated"}},
		SourceIPs:  []string{"203.0.113.5"},
		ObjectRef:  &audit.ObjectReference{Resource: "serviceaccounts", Subresource: "token", Namespace: "team-a", Name: "app"},
	}
	if code != 0 {
		e.ResponseStatus = &audit.Status{Code: code}
	}
	return e
}

const rrt1, rrt2 = "2026-11-26T23:09:13.821930Z", "2026-11-26T23:10:00.000001Z"

func TestStages(t *testing.T) {
	tests := []struct {
		name     string
		events   []*audit.Event
		expireAt int // expire pending after this many events (-1: never)
		want     []string
		late     int
	}{
		{"pair", []*audit.Event{ev("alice", "RequestReceived", "a", rrt1, 0), ev("alice", "ResponseComplete", "a", rrt1, 201)}, -1, []string{"ResponseComplete/success"}, 0},
		{"completion first", []*audit.Event{ev("alice", "ResponseComplete", "a", rrt1, 201), ev("alice", "RequestReceived", "a", rrt1, 0)}, -1, []string{"ResponseComplete/success"}, 0},
		{"panic", []*audit.Event{ev("alice", "RequestReceived", "a", rrt1, 0), ev("alice", "Panic", "a", rrt1, 500)}, -1, []string{"Panic/failure"}, 0},
		{"lone RequestReceived", []*audit.Event{ev("alice", "RequestReceived", "a", rrt1, 0)}, 1, []string{"RequestReceived/unknown"}, 0},
		{"completion after grace", []*audit.Event{ev("alice", "RequestReceived", "a", rrt1, 0), ev("alice", "ResponseComplete", "a", rrt1, 201)}, 1, []string{"RequestReceived/unknown"}, 1},
		{"duplicate completion", []*audit.Event{ev("alice", "ResponseComplete", "a", rrt1, 201), ev("alice", "ResponseComplete", "a", rrt1, 201)}, -1, []string{"ResponseComplete/success"}, 0},
		{"reused audit ID", []*audit.Event{
			ev("alice", "RequestReceived", "a", rrt1, 0), ev("alice", "ResponseComplete", "a", rrt1, 201),
			ev("mallory", "RequestReceived", "a", rrt2, 0), ev("mallory", "ResponseComplete", "a", rrt2, 403),
		}, -1, []string{"ResponseComplete/success", "ResponseComplete/failure"}, 0},
		{"excluded", []*audit.Event{ev("system:kube-controller-manager", "ResponseComplete", "a", rrt1, 201)}, -1, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRun(t, rule.DefaultConfig())
			for i, e := range tt.events {
				r.feed(e)
				if i+1 == tt.expireAt {
					r.expire()
				}
			}
			var got []string
			for _, rec := range r.records {
				stage, _ := rec.Attr("kubernetes.audit.stage")
				outcome, _ := rec.Attr("event.outcome")
				got = append(got, stage.Str+"/"+outcome.Str)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if r.late != tt.late {
				t.Errorf("late = %d, want %d", r.late, tt.late)
			}
			if len(r.records) == 2 && r.records[0].ID == r.records[1].ID {
				t.Errorf("two requests share record ID %s", r.records[0].ID)
			}
		})
	}
}

func TestKey(t *testing.T) {
	a := Key{"c", "id", rrt1, ""}
	tests := []struct {
		name string
		b    Key
		same bool
	}{
		{"same", Key{"c", "id", rrt1, ""}, true},
		{"reused audit ID", Key{"c", "id", rrt2, ""}, false},
		{"other cluster", Key{"d", "id", rrt1, ""}, false},
		{"shifted separator", Key{`c"/"id`, "", rrt1, ""}, false},
	}
	for _, tt := range tests {
		if got := a.String() == tt.b.String(); got != tt.same {
			t.Errorf("%s: %s == %s is %v, want %v", tt.name, a, tt.b, got, tt.same)
		}
		if got := a.RecordID() == tt.b.RecordID(); got != tt.same {
			t.Errorf("%s: RecordID equality %v, want %v", tt.name, got, tt.same)
		}
	}
	e := ev("alice", "ResponseComplete", "id", rrt1, 201)
	if got := KeyOf(Source{Cluster: "c"}, e); got != a {
		t.Errorf("KeyOf = %+v, want %+v", got, a)
	}
	if TokenRecord(Source{Cluster: "c"}, e, rule.Verdict{Match: true}, false).ID != a.RecordID() {
		t.Error("TokenRecord ID is not the key's RecordID")
	}
}

func TestOutcomes(t *testing.T) {
	dry := ev("alice", "ResponseComplete", "a", rrt1, 201)
	dry.RequestURI += "?dryRun=All"
	dryDenied := ev("alice", "ResponseComplete", "a", rrt1, 403)
	dryDenied.RequestURI += "?timeout=1s&dryRun=All"
	tests := []struct {
		name    string
		give    *audit.Event
		unknown bool
		outcome string
		code    int64 // 0: attribute absent
		dryRun  bool
		body    string
	}{
		{"201", ev("alice", "ResponseComplete", "a", rrt1, 201), false, "success", 201, false, "alice minted a token for service account team-a/app in cluster prod from 203.0.113.5."},
		{"403", ev("alice", "ResponseComplete", "a", rrt1, 403), false, "failure", 403, false, "alice tried to mint a token (denied, 403) for service account team-a/app in cluster prod from 203.0.113.5."},
		{"404", ev("alice", "ResponseComplete", "a", rrt1, 404), false, "failure", 404, false, "alice tried to mint a token (denied, 404)"},
		{"422", ev("alice", "ResponseComplete", "a", rrt1, 422), false, "failure", 422, false, "(denied, 422)"},
		{"dry run", dry, false, "success", 201, true, "alice minted a token in a dry run for service account team-a/app"},
		{"dry run denied", dryDenied, false, "failure", 403, true, "(dry run)."},
		{"lone RequestReceived", ev("alice", "RequestReceived", "a", rrt1, 0), true, "unknown", 0, false, "alice requested a token (outcome unknown) for service account team-a/app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := TokenRecord(Source{Cluster: "prod", Node: "cp-1"}, tt.give, rule.Verdict{Match: true}, tt.unknown)
			if v, _ := rec.Attr("event.outcome"); v.Str != tt.outcome {
				t.Errorf("event.outcome = %q, want %q", v.Str, tt.outcome)
			}
			code, ok := rec.Attr("kubernetes.audit.responseStatus.code")
			if ok != (tt.code != 0) || code.Int != tt.code {
				t.Errorf("responseStatus.code = %v (present %v), want %d", code.Int, ok, tt.code)
			}
			if v, _ := rec.Attr("tokenwatch.dry_run"); v.Kind != alert.KindBool || v.Bool != tt.dryRun {
				t.Errorf("tokenwatch.dry_run = %+v, want %v", v, tt.dryRun)
			}
			if !strings.Contains(rec.Body, tt.body) {
				t.Errorf("Body = %q, want it to contain %q", rec.Body, tt.body)
			}
		})
	}
}

// TestTokenRecordAttributes checks every attribute of the contract on a
// fully populated event.
func TestTokenRecordAttributes(t *testing.T) {
	line := `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/app/token","verb":"create","user":{"username":"system:node:cp-1","groups":["system:authenticated"],"extra":{"authentication.kubernetes.io/credential-id":["X509SHA256=ab"]}},"impersonatedUser":{"username":"bob"},"sourceIPs":["10.0.0.9","192.0.2.7"],"userAgent":"kubectl/v1.35.4","objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","apiVersion":"v1","subresource":"token"},"responseStatus":{"metadata":{},"code":201},"requestObject":{"spec":{"audiences":["vault"],"expirationSeconds":3600,"boundObjectRef":{"kind":"Pod","name":"app-0"}},"status":{"token":""}},"responseObject":{"status":{"token":"eyJhbGciOiJSUzI1NiJ9.SECRET.SIG"}},"requestReceivedTimestamp":"2026-11-26T23:09:13.821930Z","stageTimestamp":"2026-11-26T23:09:13.826405Z","annotations":{"authentication.kubernetes.io/issued-credential-id":"JTI=j1","authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"r"}}`
	e, err := audit.Decode([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := rule.New(rule.DefaultConfig())
	v := r.Evaluate(e)
	if !v.Alerts() || v.Mismatch == "" {
		t.Fatalf("verdict %+v: want an alert with a strict_groups mismatch", v)
	}
	rec := TokenRecord(Source{Cluster: "prod", Node: "cp-1"}, e, v, false)
	want := map[string]alert.Value{
		"k8s.cluster.name":                           {Kind: alert.KindString, Str: "prod"},
		"k8s.node.name":                              {Kind: alert.KindString, Str: "cp-1"},
		"kubernetes.audit.auditID":                   {Kind: alert.KindString, Str: "a1"},
		"kubernetes.audit.stage":                     {Kind: alert.KindString, Str: "ResponseComplete"},
		"kubernetes.audit.verb":                      {Kind: alert.KindString, Str: "create"},
		"kubernetes.audit.requestURI":                {Kind: alert.KindString, Str: "/api/v1/namespaces/team-a/serviceaccounts/app/token"},
		"kubernetes.audit.requestReceivedTimestamp":  {Kind: alert.KindString, Str: "2026-11-26T23:09:13.821930Z"},
		"kubernetes.audit.objectRef.namespace":       {Kind: alert.KindString, Str: "team-a"},
		"kubernetes.audit.objectRef.name":            {Kind: alert.KindString, Str: "app"},
		"k8s.namespace.name":                         {Kind: alert.KindString, Str: "team-a"},
		"user.name":                                  {Kind: alert.KindString, Str: "system:node:cp-1"},
		"kubernetes.audit.user.groups":               {Kind: alert.KindStrings, Strings: []string{"system:authenticated"}},
		"kubernetes.audit.impersonatedUser.username": {Kind: alert.KindString, Str: "bob"},
		"source.ip":                                  {Kind: alert.KindString, Str: "192.0.2.7"},
		"kubernetes.audit.sourceIPs":                 {Kind: alert.KindStrings, Strings: []string{"10.0.0.9", "192.0.2.7"}},
		"user_agent.original":                        {Kind: alert.KindString, Str: "kubectl/v1.35.4"},
		"kubernetes.audit.responseStatus.code":       {Kind: alert.KindInt, Int: 201},
		"event.outcome":                              {Kind: alert.KindString, Str: "success"},
		"kubernetes.audit.annotations.authentication_kubernetes_io/issued-credential-id": {Kind: alert.KindString, Str: "JTI=j1"},
		"kubernetes.audit.annotations.authorization_k8s_io/decision":                     {Kind: alert.KindString, Str: "allow"},
		"kubernetes.audit.annotations.authorization_k8s_io/reason":                       {Kind: alert.KindString, Str: "r"},
		"kubernetes.audit.user.extra.authentication_kubernetes_io/credential-id":         {Kind: alert.KindStrings, Strings: []string{"X509SHA256=ab"}},
		"kubernetes.audit.requestObject.spec.audiences":                                  {Kind: alert.KindStrings, Strings: []string{"vault"}},
		"kubernetes.audit.requestObject.spec.expirationSeconds":                          {Kind: alert.KindInt, Int: 3600},
		"kubernetes.audit.requestObject.spec.boundObjectRef.kind":                        {Kind: alert.KindString, Str: "Pod"},
		"kubernetes.audit.requestObject.spec.boundObjectRef.name":                        {Kind: alert.KindString, Str: "app-0"},
		"tokenwatch.dry_run":               {Kind: alert.KindBool},
		"tokenwatch.exclusion.mismatch":    {Kind: alert.KindString, Str: v.Mismatch},
		"security_rule.name":               {Kind: alert.KindString, Str: "Kubernetes Service Account Token Created via TokenRequest API"},
		"security_rule.uuid":               {Kind: alert.KindString, Str: "4df91789-7859-4bc4-9c5a-6b56bfa81a8b"},
		"security_rule.version":            {Kind: alert.KindString, Str: "1"},
		"security_rule.reference":          {Kind: alert.KindString, Str: "https://attack.mitre.org/techniques/T1552/007/"},
		"event.risk_score":                 {Kind: alert.KindInt, Int: 47},
		"threat.tactic.id":                 {Kind: alert.KindString, Str: "TA0006"},
		"threat.tactic.name":               {Kind: alert.KindString, Str: "Credential Access"},
		"threat.technique.id":              {Kind: alert.KindString, Str: "T1552"},
		"threat.technique.subtechnique.id": {Kind: alert.KindString, Str: "T1552.007"},
	}
	got := map[string]alert.Value{}
	for _, a := range rec.Attrs {
		if _, dup := got[a.Key]; dup {
			t.Errorf("attribute %s twice", a.Key)
		}
		got[a.Key] = a.Value
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("attributes (-want +got):\n%s", diff)
	}
	if rec.EventName != alert.EventTokenRequest || rec.Severity != alert.Medium {
		t.Errorf("EventName %q Severity %+v", rec.EventName, rec.Severity)
	}
	if want := time.Date(2026, 11, 26, 23, 9, 13, 821930000, time.UTC); !rec.Time.Equal(want) {
		t.Errorf("Time = %v, want %v", rec.Time, want)
	}
	if want := "system:node:cp-1 (impersonating bob) minted a token for service account team-a/app in cluster prod from 192.0.2.7."; rec.Body != want {
		t.Errorf("Body = %q, want %q", rec.Body, want)
	}
	b, _ := json.Marshal(rec)
	if strings.Contains(string(b), "SECRET") || strings.Contains(string(b), "eyJhbGci") {
		t.Errorf("the minted token leaked into the record: %s", b)
	}
}

// TestTokenRecordMarks: fields the agent cut to their bounds, or found with
// the wrong JSON type, are named on the record; the actor is still there.
func TestTokenRecordMarks(t *testing.T) {
	e, err := audit.Decode([]byte(`{"verb":"create","objectRef":{"resource":"serviceaccounts","namespace":"ns","name":"sa","subresource":"token"},"user":{"username":"alice"},"stage":"ResponseComplete","responseStatus":{"code":"201"}}`))
	if err != nil {
		t.Fatal(err)
	}
	e.Truncated = []string{"requestObject.spec.audiences"}
	rec := TokenRecord(Source{Cluster: "c"}, e, rule.Verdict{Match: true}, false)
	tests := []struct {
		key  string
		want []string
	}{
		{"tokenwatch.truncated", []string{"requestObject.spec.audiences"}},
		{"tokenwatch.malformed_fields", []string{"responseStatus.code"}},
	}
	for _, tt := range tests {
		v, ok := rec.Attr(tt.key)
		if !ok || v.Kind != alert.KindStrings || !cmp.Equal(v.Strings, tt.want) {
			t.Errorf("%s = %+v (present %v), want %q", tt.key, v, ok, tt.want)
		}
	}
	if v, _ := rec.Attr("user.name"); v.Str != "alice" {
		t.Errorf("user.name = %q, want alice", v.Str)
	}
}

func TestTokenRecordSparse(t *testing.T) {
	e := &audit.Event{Verb: "create", Stage: "ResponseComplete", User: &audit.UserInfo{Username: "x"}}
	rec := TokenRecord(Source{}, e, rule.Verdict{Match: true}, false)
	for _, k := range []string{"source.ip", "kubernetes.audit.impersonatedUser.username", "kubernetes.audit.responseStatus.code", "kubernetes.audit.requestObject.spec.audiences", "tokenwatch.exclusion.mismatch", "tokenwatch.truncated", "tokenwatch.malformed_fields"} {
		if _, ok := rec.Attr(k); ok {
			t.Errorf("attribute %s present on a sparse event", k)
		}
	}
	if v, _ := rec.Attr("kubernetes.audit.sourceIPs"); v.Kind != alert.KindStrings || v.Strings == nil {
		t.Errorf("sourceIPs = %+v, want an empty array", v)
	}
	if !rec.Time.IsZero() {
		t.Errorf("Time = %v, want zero", rec.Time)
	}
	if want := "x requested a token (outcome unknown) for service account (unknown)/(unknown) in cluster (unknown)."; rec.Body != want {
		t.Errorf("Body = %q, want %q", rec.Body, want)
	}
}
