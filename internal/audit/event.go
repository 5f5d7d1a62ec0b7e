package audit

import (
	"net/url"
	"slices"
)

// Stage names of audit.k8s.io/v1.
const (
	StageRequestReceived  = "RequestReceived"
	StageResponseStarted  = "ResponseStarted"
	StageResponseComplete = "ResponseComplete"
	StagePanic            = "Panic"
)

// Event is the subset of an audit.k8s.io/v1 Event that tokenwatch uses.
// The response body (responseObject), which holds a minted token at the
// RequestResponse level, is deliberately not part of it: it is never decoded.
type Event struct {
	Level                    string            `json:"level"`
	AuditID                  string            `json:"auditID"`
	Stage                    string            `json:"stage"`
	RequestURI               string            `json:"requestURI"`
	Verb                     string            `json:"verb"`
	User                     *UserInfo         `json:"user"`
	ImpersonatedUser         *UserInfo         `json:"impersonatedUser"`
	SourceIPs                []string          `json:"sourceIPs"`
	UserAgent                string            `json:"userAgent"`
	ObjectRef                *ObjectReference  `json:"objectRef"`
	ResponseStatus           *Status           `json:"responseStatus"`
	RequestObject            *TokenRequest     `json:"requestObject"`
	RequestReceivedTimestamp string            `json:"requestReceivedTimestamp"`
	StageTimestamp           string            `json:"stageTimestamp"`
	Annotations              map[string]string `json:"annotations"`

	// Malformed names the fields, as dotted JSON paths ("responseStatus.code"),
	// whose value had the wrong JSON type: Decode leaves them absent rather
	// than drop the event. Not part of the audit event.
	Malformed []string `json:"-"`
	// Truncated names the fields Bound cut to their bounds. Not part of the
	// audit event.
	Truncated []string `json:"-"`
	// Origin is where the agent read the event, nil when unknown. Not part
	// of the audit event.
	Origin *Origin `json:"-"`
}

// Origin locates an event in the files of the agent that read it.
type Origin struct {
	File   string // the file's name when it was read
	Offset uint64 // the byte offset of the event's line in the (decompressed) data
	// Fingerprint identifies the file's data under any name, compressed or
	// not: the SHA-256 of its first FingerprintLen bytes. Empty when unknown.
	Fingerprint    []byte
	FingerprintLen uint32
}

// UserInfo is authentication.k8s.io/v1 UserInfo.
type UserInfo struct {
	Username string              `json:"username"`
	UID      string              `json:"uid"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra"`
}

// ObjectReference is audit.k8s.io/v1 ObjectReference.
type ObjectReference struct {
	Resource    string `json:"resource"`
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	UID         string `json:"uid"`
	APIGroup    string `json:"apiGroup"`
	APIVersion  string `json:"apiVersion"`
	Subresource string `json:"subresource"`
}

// Status is the part of meta/v1 Status kept from responseStatus.
type Status struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
	Code    int32  `json:"code"`
}

// TokenRequest is the part of an authentication.k8s.io/v1 TokenRequest request
// body that tokenwatch reports. Its status (the token) is not decoded.
type TokenRequest struct {
	Spec TokenRequestSpec `json:"spec"`
}

// TokenRequestSpec is authentication.k8s.io/v1 TokenRequestSpec.
type TokenRequestSpec struct {
	Audiences         []string              `json:"audiences"`
	ExpirationSeconds *int64                `json:"expirationSeconds"`
	BoundObjectRef    *BoundObjectReference `json:"boundObjectRef"`
}

// BoundObjectReference is authentication.k8s.io/v1 BoundObjectReference.
type BoundObjectReference struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Name       string `json:"name"`
	UID        string `json:"uid"`
}

// IsTokenCreate reports whether e is a create on serviceaccounts/token, the
// request the TokenRequest API serves. It does not look at the user.
func (e *Event) IsTokenCreate() bool {
	return e.Verb == "create" && e.ObjectRef != nil &&
		e.ObjectRef.Resource == "serviceaccounts" && e.ObjectRef.Subresource == "token"
}

// Username returns the authenticated user.username, "" when absent. It never
// looks at impersonatedUser.
func (e *Event) Username() string {
	if e.User == nil {
		return ""
	}
	return e.User.Username
}

// SourceIP returns the last entry of sourceIPs: the connection's remote
// address. Earlier entries come from client-settable headers
// (X-Forwarded-For, X-Real-Ip). It is "" when sourceIPs is empty.
func (e *Event) SourceIP() string {
	if len(e.SourceIPs) == 0 {
		return ""
	}
	return e.SourceIPs[len(e.SourceIPs)-1]
}

// DryRun reports whether the request asked for ?dryRun=All, the only dry-run
// value kube-apiserver accepts.
func (e *Event) DryRun() bool {
	u, err := url.ParseRequestURI(e.RequestURI)
	if err != nil {
		return false
	}
	q, _ := url.ParseQuery(u.RawQuery) // keep what parses, as the apiserver's handlers do
	return slices.Contains(q["dryRun"], "All")
}

// Final reports whether stage is the last stage of a request
// (ResponseComplete or Panic).
func Final(stage string) bool {
	return stage == StageResponseComplete || stage == StagePanic
}

// LargestTokenEvent bounds the audit line kube-apiserver writes for one
// TokenRequest logged at the Request level, rounded up to a MiB: its body may
// be 3 MiB (the apiserver's request limit), and the apiserver escapes some
// characters six-fold when it writes the body into the event ("<" becomes
// "\u003c"). Measured on kube-apiserver v1.35.4: a body of 3,145,000 "<"
// made an 18,871,624-byte line. A log writer that rotates below it
// (--audit-log-maxsize under 19) refuses such a line, and the request never
// reaches the file.
const LargestTokenEvent = 19 << 20
