// Package auditgen writes synthetic kube-apiserver audit logs: the compact
// JSON lines, field order and escaping of the apiserver's log backend, with
// routine control-plane noise, system identities minting tokens, attackers
// minting tokens, and the decoys that fool substring scans. It also says
// which requests must alert, so that tests and benchmarks know the truth.
package auditgen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"
)

// Config tunes a generated log.
type Config struct {
	// Seed makes the output reproducible.
	Seed uint64
	// Lines is the approximate number of lines to write (at least the
	// scenario's own lines are written).
	Lines int
	// TokenRate is the fraction of requests that are token creates by
	// system identities (routine minting), e.g. 0.005.
	TokenRate float64
	// Start is the timestamp of the first request.
	Start time.Time
	// Step is the time between two requests.
	Step time.Duration
	// Attacks includes the attack scenario (non-system identities minting).
	Attacks bool
	// ResponseTokens logs token creates at RequestResponse level, with a
	// minted token in responseObject, to test that it never leaks.
	ResponseTokens bool
	// Pad makes routine lines about this long (bytes), like the ~1.1 KB
	// lines of a real control plane; 0 leaves them at their natural size.
	Pad int
	// WorkloadRate is the fraction of routine requests made by in-cluster
	// workloads with a bound service-account token (user.extra credential-id
	// "JTI=<uuid>"), drawn from Workloads. 0 (the default) writes none and
	// leaves the output as it was without these fields.
	WorkloadRate float64
	// Workloads are the service accounts and token IDs of WorkloadRate.
	Workloads []Workload
}

// Workload is an in-cluster workload: its service account user name and
// the JTI of the token it authenticates with.
type Workload struct {
	User string
	JTI  string
}

// DefaultConfig is the sample of the README: a small log with every scenario.
func DefaultConfig() Config {
	return Config{
		Seed:      1,
		Lines:     5000,
		TokenRate: 0.005,
		Start:     time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
		Step:      3 * time.Millisecond,
		Attacks:   true,
		Pad:       1100,
	}
}

// Expected is one request that must alert.
type Expected struct {
	AuditID                  string `json:"auditID"`
	RequestReceivedTimestamp string `json:"requestReceivedTimestamp"`
	User                     string `json:"user"`
	Namespace                string `json:"namespace"`
	Name                     string `json:"name"`
	// Outcome is success, failure or unknown (a lone RequestReceived).
	Outcome string `json:"outcome"`
	// DryRun is set for ?dryRun=All requests.
	DryRun bool `json:"dryRun,omitempty"`
	// Mismatch is set when a hardening kept the user from being excluded.
	Mismatch bool `json:"mismatch,omitempty"`
}

// Stats counts what was written.
type Stats struct {
	Lines         int
	Bytes         int64
	TokenCreates  int // token-create events (all stages)
	Requests      int
	Expected      int
	ResponseToken []string // tokens written in responseObject (to search for leaks)
}

// Generate writes the log to w and returns the requests that must alert
// (under the default exclusions: strict groups, self-managed platform).
func Generate(w io.Writer, cfg Config) ([]Expected, Stats, error) {
	if cfg.Step <= 0 {
		cfg.Step = time.Millisecond
	}
	if cfg.Start.IsZero() {
		cfg.Start = DefaultConfig().Start
	}
	g := &gen{
		cfg: cfg,
		rnd: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		bw:  bufio.NewWriterSize(w, 1<<20),
		now: cfg.Start,
	}
	var script []func()
	if cfg.Attacks {
		script = g.attacks()
	}
	total := cfg.Lines
	if total < len(script)*3 {
		total = len(script) * 3
	}
	// Interleave the scripted requests evenly with routine traffic.
	every := 1
	if len(script) > 0 {
		every = max(1, total/2/(len(script)+1))
	}
	req := 0
	for g.stats.Lines < total || len(script) > 0 {
		req++
		switch {
		case len(script) > 0 && req%every == 0:
			script[0]()
			script = script[1:]
		case g.rnd.Float64() < cfg.TokenRate:
			g.systemMint()
		default:
			g.routine()
		}
		if g.err != nil {
			return nil, g.stats, g.err
		}
	}
	if err := g.bw.Flush(); err != nil {
		return nil, g.stats, fmt.Errorf("write audit log: %w", err)
	}
	g.stats.Expected = len(g.expected)
	return g.expected, g.stats, g.err
}

type gen struct {
	cfg      Config
	rnd      *rand.Rand
	bw       *bufio.Writer
	now      time.Time
	expected []Expected
	stats    Stats
	err      error
	seq      int
}

// event mirrors audit.k8s.io/v1 Event's JSON field order.
type event struct {
	Kind                     string            `json:"kind"`
	APIVersion               string            `json:"apiVersion"`
	Level                    string            `json:"level"`
	AuditID                  string            `json:"auditID"`
	Stage                    string            `json:"stage"`
	RequestURI               string            `json:"requestURI"`
	Verb                     string            `json:"verb"`
	User                     user              `json:"user"`
	ImpersonatedUser         *user             `json:"impersonatedUser,omitempty"`
	SourceIPs                []string          `json:"sourceIPs,omitempty"`
	UserAgent                string            `json:"userAgent,omitempty"`
	ObjectRef                *objectRef        `json:"objectRef,omitempty"`
	ResponseStatus           *status           `json:"responseStatus,omitempty"`
	RequestObject            any               `json:"requestObject,omitempty"`
	ResponseObject           any               `json:"responseObject,omitempty"`
	RequestReceivedTimestamp string            `json:"requestReceivedTimestamp"`
	StageTimestamp           string            `json:"stageTimestamp"`
	Annotations              map[string]string `json:"annotations,omitempty"`
}

type user struct {
	Username string              `json:"username,omitempty"`
	UID      string              `json:"uid,omitempty"`
	Groups   []string            `json:"groups,omitempty"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

type objectRef struct {
	Resource    string `json:"resource,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name,omitempty"`
	APIGroup    string `json:"apiGroup,omitempty"`
	APIVersion  string `json:"apiVersion,omitempty"`
	Subresource string `json:"subresource,omitempty"`
}

type status struct {
	Metadata struct{} `json:"metadata"`
	Status   string   `json:"status,omitempty"`
	Message  string   `json:"message,omitempty"`
	Reason   string   `json:"reason,omitempty"`
	Code     int      `json:"code"`
}

const micro = "2006-01-02T15:04:05.000000Z"

func (g *gen) uuid() string {
	g.seq++
	a, b := g.rnd.Uint64(), g.rnd.Uint64()
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", uint32(a>>32), uint16(a>>16), uint16(a)&0xfff, (uint16(b>>48)&0x3fff)|0x8000, b&0xffffffffffff)
}

func (g *gen) write(e *event) {
	if g.err != nil {
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		g.err = fmt.Errorf("encode audit event: %w", err)
		return
	}
	b = append(b, '\n')
	if _, err := g.bw.Write(b); err != nil {
		g.err = fmt.Errorf("write audit log: %w", err)
		return
	}
	g.stats.Lines++
	g.stats.Bytes += int64(len(b))
	if e.Verb == "create" && e.ObjectRef != nil && e.ObjectRef.Resource == "serviceaccounts" && e.ObjectRef.Subresource == "token" {
		g.stats.TokenCreates++
	}
}

// request describes one API request; both stages are written.
type request struct {
	auditID     string
	uri         string
	verb        string
	user        user
	imp         *user
	sourceIPs   []string
	userAgent   string
	ref         *objectRef
	code        int
	level       string
	reqObj      any
	annotations map[string]string
	// loneReceived writes only the RequestReceived stage.
	loneReceived bool
	received     time.Time
}

func (g *gen) tick() time.Time {
	g.now = g.now.Add(g.cfg.Step)
	return g.now
}

func (g *gen) emit(r request) {
	g.stats.Requests++
	if r.auditID == "" {
		r.auditID = g.uuid()
	}
	if r.level == "" {
		r.level = "Metadata"
	}
	if r.received.IsZero() {
		r.received = g.tick()
	}
	rrts := r.received.Format(micro)
	base := event{
		Kind: "Event", APIVersion: "audit.k8s.io/v1", Level: r.level, AuditID: r.auditID,
		RequestURI: r.uri, Verb: r.verb, User: r.user, ImpersonatedUser: r.imp,
		SourceIPs: r.sourceIPs, UserAgent: r.userAgent, ObjectRef: r.ref,
		RequestReceivedTimestamp: rrts,
	}
	recv := base
	recv.Stage = "RequestReceived"
	recv.StageTimestamp = rrts
	g.write(&recv)
	if r.loneReceived {
		return
	}
	done := base
	done.Stage = "ResponseComplete"
	done.StageTimestamp = r.received.Add(time.Duration(1+g.rnd.IntN(4000)) * time.Microsecond).Format(micro)
	done.ResponseStatus = &status{Code: r.code}
	if r.code >= 400 {
		done.ResponseStatus.Status = "Failure"
		done.ResponseStatus.Reason = "Forbidden"
	}
	done.RequestObject = r.reqObj
	done.Annotations = r.annotations
	if isTokenCreate(r) && r.level == "RequestResponse" && r.code < 300 {
		tok := g.fakeJWT()
		g.stats.ResponseToken = append(g.stats.ResponseToken, tok)
		done.ResponseObject = map[string]any{
			"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
			"metadata": map[string]any{"name": r.ref.Name, "namespace": r.ref.Namespace},
			"spec":     map[string]any{"audiences": []string{"https://kubernetes.default.svc"}, "expirationSeconds": 3600},
			"status":   map[string]any{"token": tok, "expirationTimestamp": r.received.Add(time.Hour).Format(time.RFC3339)},
		}
	}
	g.write(&done)
}

func isTokenCreate(r request) bool {
	return r.verb == "create" && r.ref != nil && r.ref.Resource == "serviceaccounts" && r.ref.Subresource == "token"
}

func (g *gen) fakeJWT() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	part := func(n int) string {
		var sb strings.Builder
		for range n {
			sb.WriteByte(alphabet[g.rnd.IntN(len(alphabet))])
		}
		return sb.String()
	}
	return "eyJhbGciOiJSUzI1NiIsImtpZCI6In" + part(20) + "." + part(180) + "." + part(86)
}

var (
	namespaces = []string{"default", "kube-system", "team-a", "team-b", "payments", "monitoring", "ingress-nginx"}
	resources  = []string{"pods", "configmaps", "leases", "endpointslices", "nodes", "secrets", "deployments", "events"}
	verbs      = []string{"get", "list", "watch", "update", "patch"}
	agents     = []string{
		"kube-controller-manager/v1.35.4 (linux/amd64) kubernetes/0000000/leader-election",
		"kubelet/v1.35.4 (linux/amd64) kubernetes/0000000",
		"kube-scheduler/v1.35.4 (linux/amd64) kubernetes/0000000/leader-election",
		"coredns/v1.12.1 (linux/amd64) kubernetes/0000000",
	}
)

// routine writes one ordinary request, padded toward cfg.Pad bytes per line.
func (g *gen) routine() {
	ns := namespaces[g.rnd.IntN(len(namespaces))]
	res := resources[g.rnd.IntN(len(resources))]
	verb := verbs[g.rnd.IntN(len(verbs))]
	name := fmt.Sprintf("%s-%05d", res[:len(res)-1], g.rnd.IntN(20000))
	uri := fmt.Sprintf("/api/v1/namespaces/%s/%s/%s", ns, res, name)
	if verb == "list" || verb == "watch" {
		uri = fmt.Sprintf("/api/v1/namespaces/%s/%s?limit=500&resourceVersion=%d&timeoutSeconds=%d", ns, res, g.rnd.IntN(1<<20), 300+g.rnd.IntN(300))
		name = ""
	}
	u := user{Username: "system:node:cp-1", Groups: []string{"system:nodes", "system:authenticated"}}
	if g.rnd.IntN(3) == 0 {
		u = user{Username: "system:kube-controller-manager", Groups: []string{"system:authenticated"}}
	}
	r := request{
		uri: uri, verb: verb, user: u, sourceIPs: []string{"10.0.0.11"},
		userAgent: agents[g.rnd.IntN(len(agents))],
		ref:       &objectRef{Resource: res, Namespace: ns, Name: name, APIVersion: "v1"},
		code:      200,
		annotations: map[string]string{
			"authorization.k8s.io/decision": "allow",
			"authorization.k8s.io/reason":   "",
		},
	}
	if g.cfg.Pad > 0 {
		// Real lines carry credential ids and long user agents; pad the
		// user extra so a line is about Pad bytes.
		n := g.cfg.Pad - 720 - len(uri)
		if n > 0 {
			r.user.Extra = map[string][]string{"authentication.kubernetes.io/credential-id": {"X509SHA256=" + strings.Repeat("0", n)}}
		}
	}
	if g.cfg.WorkloadRate > 0 && len(g.cfg.Workloads) > 0 && g.rnd.Float64() < g.cfg.WorkloadRate {
		g.workload(&r, g.cfg.Workloads[g.rnd.IntN(len(g.cfg.Workloads))])
	}
	g.emit(r)
}

// workload makes r a request by the pod of w, authenticated with its bound
// token: the user.extra kube-apiserver logs for it, and a user agent padded
// so that the line keeps about cfg.Pad bytes.
func (g *gen) workload(r *request, w Workload) {
	ns, name := "default", w.User
	if parts := strings.Split(w.User, ":"); len(parts) == 4 {
		ns, name = parts[2], parts[3]
	}
	pod := fmt.Sprintf("%s-%05d", name, g.rnd.IntN(100000))
	r.user = user{
		Username: w.User,
		UID:      g.uuid(),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		Extra: map[string][]string{
			"authentication.kubernetes.io/credential-id": {"JTI=" + w.JTI},
			"authentication.kubernetes.io/node-name":     {"worker-1"},
			"authentication.kubernetes.io/node-uid":      {g.uuid()},
			"authentication.kubernetes.io/pod-name":      {pod},
			"authentication.kubernetes.io/pod-uid":       {g.uuid()},
		},
	}
	r.sourceIPs = []string{"10.244.1.17"}
	r.userAgent = name + "/v1.0.0 (linux/amd64) kubernetes/0000000"
	if g.cfg.Pad > 0 {
		if n := g.cfg.Pad - 1020 - len(r.uri); n > 0 {
			r.userAgent += " " + strings.Repeat("0", n)
		}
	}
}

// systemMint is routine token minting by excluded system identities.
func (g *gen) systemMint() {
	ns := namespaces[g.rnd.IntN(len(namespaces))]
	sa := fmt.Sprintf("sa-%03d", g.rnd.IntN(200))
	var u user
	switch g.rnd.IntN(3) {
	case 0:
		u = user{Username: "system:node:cp-1", Groups: []string{"system:nodes", "system:authenticated"}}
	case 1:
		u = user{Username: "system:kube-controller-manager", Groups: []string{"system:authenticated"}}
	default:
		u = user{Username: "system:serviceaccount:kube-system:generic-garbage-collector",
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}}
	}
	g.emit(g.tokenRequest(u, ns, sa, 201, nil))
}

func (g *gen) tokenRequest(u user, ns, sa string, code int, imp *user) request {
	level := "Request"
	if g.cfg.ResponseTokens {
		level = "RequestResponse"
	}
	jti := g.uuid()
	ann := map[string]string{"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}
	if code < 300 {
		ann["authentication.kubernetes.io/issued-credential-id"] = "JTI=" + jti
	}
	if code == 403 {
		ann["authorization.k8s.io/decision"] = "forbid"
	}
	return request{
		uri:       fmt.Sprintf("/api/v1/namespaces/%s/serviceaccounts/%s/token", ns, sa),
		verb:      "create",
		user:      u,
		imp:       imp,
		sourceIPs: []string{"10.0.0.11"},
		userAgent: "kubelet/v1.35.4 (linux/amd64) kubernetes/0000000",
		ref:       &objectRef{Resource: "serviceaccounts", Namespace: ns, Name: sa, APIVersion: "v1", Subresource: "token"},
		code:      code,
		level:     level,
		reqObj: map[string]any{
			"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": map[string]any{},
			"spec":   map[string]any{"audiences": []string{"https://kubernetes.default.svc"}, "expirationSeconds": 3607, "boundObjectRef": nil},
			"status": map[string]any{"token": "", "expirationTimestamp": nil},
		},
		annotations: ann,
	}
}

func (g *gen) expect(r request, outcome string) {
	e := Expected{
		AuditID: r.auditID, RequestReceivedTimestamp: r.received.Format(micro),
		User: r.user.Username, Namespace: r.ref.Namespace, Name: r.ref.Name, Outcome: outcome,
		DryRun: strings.Contains(r.uri, "dryRun=All"),
	}
	g.expected = append(g.expected, e)
}

// attack returns a scripted token request that must alert.
func (g *gen) attack(r request, outcome string, mismatch bool) func() {
	return func() {
		r.auditID = g.uuid()
		r.received = g.tick()
		g.emit(r)
		g.expect(r, outcome)
		if mismatch {
			g.expected[len(g.expected)-1].Mismatch = true
		}
	}
}

func (g *gen) attacks() []func() {
	alice := user{Username: "alice", Groups: []string{"developers", "system:authenticated"}}
	mallory := user{Username: "mallory", Groups: []string{"system:authenticated"}}
	admin := user{Username: "kubernetes-admin", Groups: []string{"system:masters", "system:authenticated"}}
	fakeNode := user{Username: "system:node:evil", Groups: []string{"system:authenticated"}}
	eks := user{Username: "eks:node-manager", Groups: []string{"system:authenticated"}}
	saMinter := user{Username: "system:serviceaccount:team-a:token-minter",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"}}

	withIP := func(r request, ips ...string) request {
		r.sourceIPs = ips
		r.userAgent = "kubectl/v1.35.4 (linux/amd64) kubernetes/0000000"
		return r
	}
	dry := g.tokenRequest(admin, "payments", "payments-deployer", 201, nil)
	dry.uri += "?dryRun=All"
	imp := g.tokenRequest(admin, "team-b", "ci-bot", 201, &user{Username: "alice", Groups: []string{"developers"}})
	// The same client-chosen Audit-ID twice, at two different times: two requests.
	reusedID := g.uuid()
	reuse := func() {
		for range 2 {
			r := withIP(g.tokenRequest(mallory, "default", "default", 201, nil), "198.51.100.23")
			r.auditID = reusedID
			r.received = g.tick()
			g.emit(r)
			g.expect(r, "success")
		}
	}
	lone := func() {
		r := withIP(g.tokenRequest(alice, "team-a", "builder", 201, nil), "203.0.113.7")
		r.auditID = g.uuid()
		r.received = g.tick()
		r.loneReceived = true
		g.emit(r)
		g.expect(r, "unknown")
	}
	decoys := func() {
		// get on the token subresource, create on secrets/<n>/token, and a
		// SubjectAccessReview whose body names the token subresource.
		get := g.tokenRequest(alice, "team-a", "builder", 200, nil)
		get.verb = "get"
		g.emit(get)
		sec := g.tokenRequest(alice, "team-a", "builder", 201, nil)
		sec.ref = &objectRef{Resource: "secrets", Namespace: "team-a", Name: "builder", APIVersion: "v1", Subresource: "token"}
		sec.uri = "/api/v1/namespaces/team-a/secrets/builder/token"
		g.emit(sec)
		g.emit(request{
			uri: "/apis/authorization.k8s.io/v1/subjectaccessreviews", verb: "create", user: admin,
			sourceIPs: []string{"10.0.0.11"}, userAgent: "kube-apiserver", level: "Request", code: 201,
			ref: &objectRef{Resource: "subjectaccessreviews", APIGroup: "authorization.k8s.io", APIVersion: "v1"},
			reqObj: map[string]any{"kind": "SubjectAccessReview", "spec": map[string]any{"resourceAttributes": map[string]any{
				"verb": "create", "resource": "serviceaccounts", "subresource": "token", "namespace": "team-a"}}},
		})
	}
	return []func(){
		g.attack(withIP(g.tokenRequest(alice, "team-a", "deployer", 201, nil), "203.0.113.7"), "success", false),
		decoys,
		g.attack(withIP(g.tokenRequest(alice, "kube-system", "clusterrole-aggregation-controller", 403, nil), "203.0.113.7"), "failure", false),
		g.attack(withIP(g.tokenRequest(mallory, "kube-system", "admin", 403, nil), "198.51.100.23"), "failure", false),
		g.attack(withIP(imp, "192.0.2.10"), "success", false),
		g.attack(withIP(dry, "192.0.2.10"), "success", false),
		reuse,
		g.attack(withIP(g.tokenRequest(fakeNode, "kube-system", "coredns", 201, nil), "198.51.100.99"), "success", true),
		g.attack(withIP(g.tokenRequest(eks, "kube-system", "aws-node", 201, nil), "198.51.100.99"), "success", true),
		g.attack(withIP(g.tokenRequest(saMinter, "payments", "payments-admin", 201, nil), "10.0.0.42", "10.244.1.17"), "success", false),
		lone,
	}
}
