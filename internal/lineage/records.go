package lineage

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// Attribute keys lineage adds.
const (
	AttrWatchUntil  = "tokenwatch.lineage.watch_until"
	AttrWatchCapped = "tokenwatch.lineage.watch_capped"
	AttrParentJTI   = "tokenwatch.lineage.parent_jti"
	AttrRootUser    = "tokenwatch.lineage.root.user"
	AttrDepth       = "tokenwatch.lineage.depth"
	AttrReasons     = "tokenwatch.lineage.reasons"
	AttrNewReasons  = "tokenwatch.lineage.new_reasons"
	AttrAction      = "tokenwatch.lineage.action"
)

// maxArray is the most entries an array attribute holds; a ".count"
// attribute gives the full number where one was cut.
const maxArray = 100

// recordID is a digest of parts under prefix: the same inputs give the same
// ID on every retry.
func recordID(prefix string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return prefix + hex.EncodeToString(h.Sum(nil)[:16])
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// WatchAttrs are the attributes of m's token_request record:
// tokenwatch.lineage.watch_until and tokenwatch.lineage.watch_capped.
func (m Mint) WatchAttrs() []alert.Attr {
	return []alert.Attr{
		alert.String(AttrWatchUntil, rfc3339(m.Until)),
		alert.Bool(AttrWatchCapped, m.Capped),
	}
}

// Attrs are the chain attributes of the token_request record.
func (c Chain) Attrs() []alert.Attr {
	return []alert.Attr{
		alert.String(AttrParentJTI, c.ParentJTI),
		alert.String(AttrRootUser, c.RootUser),
		alert.Int(AttrDepth, int64(c.Depth)),
	}
}

// mintAttrs are the common lineage attributes of the records about m's
// token, with its chain when it has one.
func mintAttrs(m *Mint, root string, depth int) []alert.Attr {
	a := []alert.Attr{
		alert.String("tokenwatch.lineage.jti", m.JTI),
		alert.String("tokenwatch.lineage.mint.auditID", m.AuditID),
		alert.String("tokenwatch.lineage.mint.cluster", m.Cluster),
		alert.String("tokenwatch.lineage.mint.user", m.User),
		alert.String("tokenwatch.lineage.mint.source.ip", m.SourceIP),
		alert.String("tokenwatch.lineage.mint.time", rfc3339(m.Time)),
		alert.String("tokenwatch.lineage.mint.service_account", m.Namespace+"/"+m.Name),
	}
	if depth > 0 {
		a = append(a, alert.String(AttrRootUser, root), alert.Int(AttrDepth, int64(depth)))
	}
	return a
}

// requestAttrs are a request's own fields under the token-request
// attribute names.
func requestAttrs(src Source, e *audit.Event) []alert.Attr {
	var ref audit.ObjectReference
	if e.ObjectRef != nil {
		ref = *e.ObjectRef
	}
	a := []alert.Attr{
		alert.String("k8s.cluster.name", src.Cluster),
		alert.String("k8s.node.name", src.Node),
		alert.String("kubernetes.audit.auditID", e.AuditID),
		alert.String("kubernetes.audit.verb", e.Verb),
		alert.String("kubernetes.audit.requestURI", e.RequestURI),
		alert.String("kubernetes.audit.requestReceivedTimestamp", e.RequestReceivedTimestamp),
		alert.String("kubernetes.audit.objectRef.resource", ref.Resource),
		alert.String("kubernetes.audit.objectRef.subresource", ref.Subresource),
		alert.String("kubernetes.audit.objectRef.namespace", ref.Namespace),
		alert.String("kubernetes.audit.objectRef.name", ref.Name),
		alert.String("kubernetes.audit.objectRef.apiGroup", ref.APIGroup),
		alert.String("user.name", e.Username()),
	}
	if e.ImpersonatedUser != nil {
		a = append(a, alert.String("kubernetes.audit.impersonatedUser.username", e.ImpersonatedUser.Username))
	}
	if ip := e.SourceIP(); ip != "" {
		a = append(a, alert.String("source.ip", ip))
	}
	a = append(a, alert.String("user_agent.original", e.UserAgent))
	if e.ResponseStatus != nil && e.ResponseStatus.Code != 0 {
		a = append(a, alert.Int("kubernetes.audit.responseStatus.code", int64(e.ResponseStatus.Code)))
	}
	return append(a, alert.String("event.outcome", detect.Outcome(e, false)))
}

// VerbKey is the key a request is counted under in
// tokenwatch.lineage.verbs: "verb resource[/subresource] namespace", the
// namespace left out for a cluster-scoped object, the path for a
// non-resource request ("get /version").
func VerbKey(e *audit.Event) string {
	r := e.ObjectRef
	if r == nil || r.Resource == "" {
		path, _, _ := strings.Cut(e.RequestURI, "?")
		return e.Verb + " " + path
	}
	k := e.Verb + " " + r.Resource
	if r.Subresource != "" {
		k += "/" + r.Subresource
	}
	if r.Namespace != "" {
		k += " " + r.Namespace
	}
	return k
}

// CodeKey is the key a request is counted under in
// tokenwatch.lineage.outcomes: its responseStatus.code, "0" when absent.
func CodeKey(e *audit.Event) string {
	if e.ResponseStatus == nil {
		return "0"
	}
	return strconv.Itoa(int(e.ResponseStatus.Code))
}

// arrayAttrs is key's array of at most maxArray values, with key.count
// when it was cut.
func arrayAttrs(key string, vals []string) []alert.Attr {
	if len(vals) <= maxArray {
		return []alert.Attr{alert.Strings(key, vals)}
	}
	return []alert.Attr{alert.Strings(key, vals[:maxArray]), alert.Int(key+".count", int64(len(vals)))}
}

// sortedSet returns the keys of m in order.
func sortedSet[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// countList returns "key=count" for each entry of m, the largest counts
// first (then by key).
func countList(m map[string]uint64) []string {
	keys := sortedSet(m)
	slices.SortStableFunc(keys, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}
