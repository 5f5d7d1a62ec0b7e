// Package auditwrite writes audit events the way kube-apiserver does:
// through Kubernetes' own audit log backend (k8s.io/apiserver
// plugin/pkg/audit/log, JSON, audit.k8s.io/v1) into lumberjack with the
// apiserver's rotation settings, or into a plain file rotated by copy and
// truncate as logrotate's copytruncate does.
package auditwrite

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	auditinternal "k8s.io/apiserver/pkg/apis/audit"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/apiserver/pkg/audit"
	auditlog "k8s.io/apiserver/plugin/pkg/audit/log"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

// Mode is how the log rotates.
type Mode string

// Rotation modes.
const (
	Lumberjack   Mode = "lumberjack"   // rename + gzip, as kube-apiserver
	CopyTruncate Mode = "copytruncate" // copy then truncate, as logrotate
)

// Config sizes a run.
type Config struct {
	Path      string
	Mode      Mode
	MaxSizeMB int  // rotation size (lumberjack's unit is MB)
	Compress  bool // lumberjack: gzip backups
	// MaxBackups is lumberjack's backup count (0: keep all).
	MaxBackups  int
	Events      int // total events to write
	AlertEvery  int // every n-th request is an attacker's token create
	SystemEvery int // every n-th request is a system identity's token create (no alert)
	Cluster     string
	// RateMBps paces the writer (0: as fast as it can).
	RateMBps float64
	// Milestones receives i when i tenths of Events have been written
	// (1..10); it is never blocked on (buffered by the caller).
	Milestones chan<- int
}

// Result is what was written.
type Result struct {
	Wants     []harness.Want
	Events    int
	Bytes     int64
	Rotations int
}

// Run writes the events and returns the expected alerts. It stops early when
// ctx ends.
func Run(ctx context.Context, c Config) (Result, error) {
	var out io.Writer
	var closeFn func() error
	var rotations func() int
	switch c.Mode {
	case Lumberjack:
		lj := &lumberjack.Logger{Filename: c.Path, MaxSize: c.MaxSizeMB, MaxBackups: c.MaxBackups, Compress: c.Compress}
		out, closeFn = lj, lj.Close
		rotations = func() int {
			m, _ := filepath.Glob(strings.TrimSuffix(c.Path, filepath.Ext(c.Path)) + "-*")
			return len(m)
		}
	case CopyTruncate:
		ct, err := newCopyTruncate(c.Path, int64(c.MaxSizeMB)<<20)
		if err != nil {
			return Result{}, err
		}
		out, closeFn = ct, ct.Close
		rotations = func() int { return ct.rotations }
	default:
		return Result{}, fmt.Errorf("unknown rotation mode %q", c.Mode)
	}
	counter := &countingWriter{w: out}
	backend := auditlog.NewBackend(counter, auditlog.FormatJson, auditv1.SchemeGroupVersion)
	var res Result
	pad := strings.Repeat("p", 520)
	next := 1
	began := time.Now()
	for i := 0; i < c.Events && ctx.Err() == nil; i++ {
		if c.RateMBps > 0 && i%64 == 0 {
			due := began.Add(time.Duration(float64(counter.n) / (c.RateMBps * 1e6) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(d):
				}
			}
		}
		now := time.Now()
		id := uuid()
		switch {
		case c.AlertEvery > 0 && i%c.AlertEvery == c.AlertEvery-1:
			user := fmt.Sprintf("attacker-%d", i%7)
			ns, sa := fmt.Sprintf("team-%d", i%3), "app"
			u := authnv1.UserInfo{Username: user, Groups: []string{"system:authenticated"}}
			for _, ev := range tokenCreate(id, now, u, ns, sa, pad) {
				if !backend.ProcessEvents(ev) {
					return res, fmt.Errorf("audit backend refused an event")
				}
			}
			res.Wants = append(res.Wants, harness.Want{Cluster: c.Cluster, AuditID: id,
				RequestReceivedTimestamp: now.UTC().Format("2006-01-02T15:04:05.000000Z"), User: user, Namespace: ns, Name: sa})
			i++
		case c.SystemEvery > 0 && i%c.SystemEvery == c.SystemEvery-1:
			u := authnv1.UserInfo{Username: "system:node:cp-1", Groups: []string{"system:nodes", "system:authenticated"}}
			if i%2 == 0 {
				u = authnv1.UserInfo{Username: "system:kube-controller-manager", Groups: []string{"system:authenticated"}}
			}
			for _, ev := range tokenCreate(id, now, u, "kube-system", "coredns", pad) {
				backend.ProcessEvents(ev)
			}
			i++
		default:
			backend.ProcessEvents(noise(id, now, i, pad))
		}
		for c.Milestones != nil && next <= 10 && i+1 >= c.Events*next/10 {
			select {
			case c.Milestones <- next:
			default:
			}
			next++
		}
	}
	res.Events = c.Events
	res.Bytes = counter.n
	if err := closeFn(); err != nil {
		return res, fmt.Errorf("close audit log: %w", err)
	}
	res.Rotations = rotations()
	return res, ctx.Err()
}

var _ audit.Backend = auditlog.NewBackend(io.Discard, auditlog.FormatJson, auditv1.SchemeGroupVersion)

func tokenCreate(id string, now time.Time, u authnv1.UserInfo, ns, sa, pad string) []*auditinternal.Event {
	base := auditinternal.Event{
		Level:      auditinternal.LevelRequest,
		AuditID:    types.UID(id),
		RequestURI: "/api/v1/namespaces/" + ns + "/serviceaccounts/" + sa + "/token",
		Verb:       "create",
		User:       u,
		SourceIPs:  []string{"10.0.0.9"},
		UserAgent:  "kubectl/v1.35.4 (linux/amd64) kubernetes/e2e",
		ObjectRef: &auditinternal.ObjectReference{Resource: "serviceaccounts", Subresource: "token",
			Namespace: ns, Name: sa, APIVersion: "v1"},
		RequestReceivedTimestamp: metav1.NewMicroTime(now),
		StageTimestamp:           metav1.NewMicroTime(now),
	}
	rr := base
	rr.Stage = auditinternal.StageRequestReceived
	rc := base
	rc.Stage = auditinternal.StageResponseComplete
	rc.StageTimestamp = metav1.NewMicroTime(now.Add(3 * time.Millisecond))
	rc.ResponseStatus = &metav1.Status{Code: 201}
	rc.Annotations = map[string]string{
		"authorization.k8s.io/decision":                     "allow",
		"authorization.k8s.io/reason":                       "RBAC: allowed",
		"authentication.kubernetes.io/issued-credential-id": "JTI=" + id,
	}
	return []*auditinternal.Event{&rr, &rc}
}

func noise(id string, now time.Time, i int, pad string) *auditinternal.Event {
	return &auditinternal.Event{
		Level:      auditinternal.LevelMetadata,
		AuditID:    types.UID(id),
		Stage:      auditinternal.StageResponseComplete,
		RequestURI: fmt.Sprintf("/api/v1/namespaces/kube-system/configmaps/cm-%d?resourceVersion=0&pad=%s", i%50, pad),
		Verb:       "get",
		User:       authnv1.UserInfo{Username: "system:kube-scheduler", Groups: []string{"system:authenticated"}},
		SourceIPs:  []string{"127.0.0.1"},
		UserAgent:  "kube-scheduler/v1.35.4 (linux/amd64) kubernetes/e2e",
		ObjectRef: &auditinternal.ObjectReference{Resource: "configmaps", Namespace: "kube-system",
			Name: fmt.Sprintf("cm-%d", i%50), APIVersion: "v1"},
		ResponseStatus:           &metav1.Status{Code: 200},
		RequestReceivedTimestamp: metav1.NewMicroTime(now),
		StageTimestamp:           metav1.NewMicroTime(now),
		Annotations:              map[string]string{"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// copyTruncate appends to path and, past max bytes, copies the file to
// path.N and truncates it in place, pausing writes during the copy.
type copyTruncate struct {
	mu        sync.Mutex
	path      string
	f         *os.File
	size      int64
	max       int64
	rotations int
}

func newCopyTruncate(path string, max int64) (*copyTruncate, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &copyTruncate{path: path, f: f, max: max}, nil
}

func (c *copyTruncate) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.size+int64(len(p)) > c.max && c.size > 0 {
		if err := c.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := c.f.Write(p)
	c.size += int64(n)
	return n, err
}

func (c *copyTruncate) rotate() error {
	c.rotations++
	dst := fmt.Sprintf("%s.%d", c.path, c.rotations)
	src, err := os.Open(c.path)
	if err != nil {
		return fmt.Errorf("copytruncate: open: %w", err)
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copytruncate: create %s: %w", dst, err)
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		return fmt.Errorf("copytruncate: copy: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copytruncate: close copy: %w", err)
	}
	if err := c.f.Truncate(0); err != nil {
		return fmt.Errorf("copytruncate: truncate: %w", err)
	}
	c.size = 0
	return nil
}

func (c *copyTruncate) Close() error { return c.f.Close() }

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// Mint returns the stages of a token create by u for ns/sa, logged at now,
// that minted the token jti (its issued-credential-id annotation).
func Mint(id, jti string, now time.Time, u authnv1.UserInfo, ns, sa string) []*auditinternal.Event {
	evs := tokenCreate(id, now, u, ns, sa, "")
	evs[len(evs)-1].Annotations["authentication.kubernetes.io/issued-credential-id"] = "JTI=" + jti
	return evs
}

// Use returns a request authenticated with the token jti of service
// account ns/sa: verb on resource in ns, from ip, logged at now.
func Use(id, jti string, now time.Time, ip, verb, resource, ns, sa string) *auditinternal.Event {
	return &auditinternal.Event{
		Level:      auditinternal.LevelMetadata,
		AuditID:    types.UID(id),
		Stage:      auditinternal.StageResponseComplete,
		RequestURI: "/api/v1/namespaces/" + ns + "/" + resource,
		Verb:       verb,
		User: authnv1.UserInfo{
			Username: "system:serviceaccount:" + ns + ":" + sa,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			Extra:    map[string]authnv1.ExtraValue{"authentication.kubernetes.io/credential-id": {"JTI=" + jti}},
		},
		SourceIPs:                []string{ip},
		UserAgent:                "kubectl/v1.35.4 (linux/amd64) kubernetes/e2e",
		ObjectRef:                &auditinternal.ObjectReference{Resource: resource, Namespace: ns, APIVersion: "v1"},
		ResponseStatus:           &metav1.Status{Code: 200},
		RequestReceivedTimestamp: metav1.NewMicroTime(now),
		StageTimestamp:           metav1.NewMicroTime(now.Add(2 * time.Millisecond)),
		Annotations:              map[string]string{"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
	}
}

// Append writes evs to the end of the file at path through the audit log
// backend.
func Append(path string, evs ...*auditinternal.Event) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	backend := auditlog.NewBackend(f, auditlog.FormatJson, auditv1.SchemeGroupVersion)
	for _, ev := range evs {
		if !backend.ProcessEvents(ev) {
			f.Close()
			return fmt.Errorf("audit backend refused event %s", ev.AuditID)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close audit log: %w", err)
	}
	return nil
}

// NewID returns a random UUID, as the apiserver's auditIDs and JTIs.
func NewID() string { return uuid() }
