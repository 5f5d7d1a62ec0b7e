package kube

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Audit annotations and user.extra keys that token lineage rests on.
const (
	// AnnotationIssuedCredentialID is set on a TokenRequest's event:
	// "JTI=<uuid>" of the token it minted.
	AnnotationIssuedCredentialID = "authentication.kubernetes.io/issued-credential-id"
	// ExtraCredentialID is the user.extra key that names the credential a
	// request was authenticated with ("JTI=<uuid>" for a bound token).
	ExtraCredentialID = "authentication.kubernetes.io/credential-id"
	// AnnotationLegacyToken is set on requests authenticated with a legacy
	// Secret-based token: "system:serviceaccount:<ns>:<name>".
	AnnotationLegacyToken = "authentication.k8s.io/legacy-token"
)

// AuditEvent is the part of an audit.k8s.io/v1 event the e2e tests check.
type AuditEvent struct {
	AuditID    string `json:"auditID"`
	Stage      string `json:"stage"`
	Verb       string `json:"verb"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string              `json:"username"`
		Extra    map[string][]string `json:"extra"`
	} `json:"user"`
	SourceIPs []string `json:"sourceIPs"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestObject *struct {
		Spec struct {
			ExpirationSeconds *int64 `json:"expirationSeconds"`
		} `json:"spec"`
	} `json:"requestObject"`
	RequestReceivedTimestamp time.Time         `json:"requestReceivedTimestamp"`
	Annotations              map[string]string `json:"annotations"`
	// Line is the event as logged.
	Line []byte `json:"-"`
	// File is the audit file it was read from.
	File string `json:"-"`
}

// SourceIP is the last sourceIPs entry: the connection's remote address.
func (e AuditEvent) SourceIP() string {
	if len(e.SourceIPs) == 0 {
		return ""
	}
	return e.SourceIPs[len(e.SourceIPs)-1]
}

// CredentialJTI is the JTI (without "JTI=") the request was authenticated
// with, or "".
func (e AuditEvent) CredentialJTI() string {
	for _, v := range e.User.Extra[ExtraCredentialID] {
		if jti, ok := strings.CutPrefix(v, "JTI="); ok {
			return jti
		}
	}
	return ""
}

// IssuedJTI is the JTI (without "JTI=") of the token a TokenRequest minted, or "".
func (e AuditEvent) IssuedJTI() string {
	jti, _ := strings.CutPrefix(e.Annotations[AnnotationIssuedCredentialID], "JTI=")
	return jti
}

// Code is responseStatus.code, 0 when absent.
func (e AuditEvent) Code() int {
	if e.ResponseStatus == nil {
		return 0
	}
	return e.ResponseStatus.Code
}

// Resource is objectRef's "resource[/subresource]", "" without objectRef.
func (e AuditEvent) Resource() string {
	if e.ObjectRef == nil {
		return ""
	}
	if e.ObjectRef.Subresource != "" {
		return e.ObjectRef.Resource + "/" + e.ObjectRef.Subresource
	}
	return e.ObjectRef.Resource
}

// ReadAudit reads every event of the audit files (plain or gzipped), in
// file order.
func ReadAudit(files ...string) ([]AuditEvent, error) {
	var all []AuditEvent
	for _, f := range files {
		evs, err := readAuditFile(f)
		if err != nil {
			return nil, err
		}
		all = append(all, evs...)
	}
	return all, nil
}

func readAuditFile(path string) ([]AuditEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open audit file: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if filepath.Ext(path) == ".gz" {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("gunzip %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	}
	var evs []AuditEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("decode audit event in %s: %w", path, err)
		}
		ev.Line = append([]byte(nil), sc.Bytes()...)
		ev.File = path
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return evs, nil
}

// Audit reads the events of the cluster's audit log and its rotated files.
func (c *Cluster) Audit() ([]AuditEvent, error) {
	return ReadAudit(c.AuditFiles()...)
}
