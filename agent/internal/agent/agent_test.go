package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwatch/tokenwatch/agent/internal/checkpoint"
	"github.com/tokenwatch/tokenwatch/agent/internal/sender"
	"github.com/tokenwatch/tokenwatch/internal/follow"
	"github.com/tokenwatch/tokenwatch/internal/wire"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// aggregator is a recording stub: it welcomes, records event audit IDs and
// acknowledges batches unless holding.
type aggregator struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer

	mu      sync.Mutex
	hold    bool
	beatMs  uint32 // the heartbeat interval it asks for (0: the agent's default)
	hellos  []*tokenwatchv1.Hello
	events  []string
	tokens  []*tokenwatchv1.TokenEvent
	sources []*tokenwatchv1.SourcePosition
	beats   []*tokenwatchv1.Heartbeat
	changed chan struct{}
}

func newAggregator(t *testing.T, hold bool) (*aggregator, string) {
	t.Helper()
	a := &aggregator{hold: hold, changed: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return a, lis.Addr().String()
}

func (a *aggregator) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.hellos = append(a.hellos, first.GetHello())
	a.mu.Unlock()
	a.mu.Lock()
	w := &tokenwatchv1.Welcome{HeartbeatIntervalMs: a.beatMs}
	a.mu.Unlock()
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b := req.GetBatch()
		if b == nil {
			if h := req.GetHeartbeat(); h != nil {
				a.mu.Lock()
				a.beats = append(a.beats, h)
				a.mu.Unlock()
			}
			continue
		}
		a.mu.Lock()
		for _, e := range b.Events {
			a.tokens = append(a.tokens, e)
			a.events = append(a.events, e.AuditId)
			a.sources = append(a.sources, e.Source)
		}
		for _, l := range b.Losses {
			a.events = append(a.events, "loss:"+l.Reason)
		}
		hold := a.hold
		close(a.changed)
		a.changed = make(chan struct{})
		a.mu.Unlock()
		if !hold {
			if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}}); err != nil {
				return err
			}
		}
	}
}

func (a *aggregator) waitEvents(t *testing.T, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		a.mu.Lock()
		got, ch := append([]string(nil), a.events...), a.changed
		a.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("aggregator received %v, want %d events", got, n)
		}
	}
}

func (a *aggregator) tokenEvents() []*tokenwatchv1.TokenEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.tokens)
}

func tokenLine(id string) string {
	return `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"` + id +
		`","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/app/token","verb":"create",` +
		`"user":{"username":"alice","groups":["system:authenticated"]},"sourceIPs":["10.0.0.9"],` +
		`"objectRef":{"resource":"serviceaccounts","namespace":"team-a","name":"app","apiVersion":"v1","subresource":"token"},` +
		`"responseStatus":{"metadata":{},"code":201},"requestReceivedTimestamp":"2026-11-26T23:09:25.383216Z","stageTimestamp":"2026-11-26T23:09:25.386281Z"}` + "\n"
}

const noise = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"n","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/app/token","verb":"get","user":{"username":"bob"},"objectRef":{"resource":"serviceaccounts","subresource":"token"}}` + "\n"

// recordingStore records every checkpoint written.
type recordingStore struct {
	mu    sync.Mutex
	saved []follow.Position
	inner checkpoints
}

func (r *recordingStore) LoadStarts() (*follow.Position, checkpoint.Starts, error) {
	return r.inner.LoadStarts()
}
func (r *recordingStore) SaveStarts(p follow.Position, st checkpoint.Starts) error {
	r.mu.Lock()
	r.saved = append(r.saved, p)
	r.mu.Unlock()
	return r.inner.SaveStarts(p, st)
}

func (r *recordingStore) offsets() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var o []int64
	for _, p := range r.saved {
		o = append(o, p.Offset)
	}
	return o
}

// withStore makes Run with c use rec over the real store of the state dir.
func withStore(c Config, rec *recordingStore) Config {
	c.openCheckpoints = func(dir string) (checkpoints, error) {
		inner, err := openCheckpoints(dir)
		if err != nil {
			return nil, err
		}
		rec.inner = inner
		return rec, nil
	}
	return c
}

func config(logPath, addr, state string) Config {
	return Config{
		AuditLog: logPath, Cluster: "prod", NodeName: "cp-1", Aggregator: addr, Insecure: true,
		StateDir: state, StartAt: follow.StartBeginning, OnceTimeout: time.Minute,
		ShutdownTimeout: 300 * time.Millisecond, CheckpointInterval: 5 * time.Millisecond,
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckpointMovesOnlyOnAck follows a file into an aggregator that never
// acknowledges (the checkpoint may not move past the start), replays it into one that does
// (the checkpoint reaches the end of the file), then resumes from the
// checkpoint and sends only what was appended.
func TestCheckpointMovesOnlyOnAck(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	state := filepath.Join(dir, "state")
	appendFile(t, logPath, noise+tokenLine("a1")+noise+tokenLine("a2")+tokenLine("a3")+noise)

	// 1: nothing acknowledged, nothing saved.
	rec := &recordingStore{}
	holding, addr := newAggregator(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, withStore(config(logPath, addr, state), rec)) }()
	if got := holding.waitEvents(t, 3); !cmp.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Fatalf("events = %v, want a1 a2 a3", got)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run after stop = %v, want nil", err)
	}
	// Only where reading started (offset 0) may be saved: it needs no ack.
	if o := rec.offsets(); !cmp.Equal(o, []int64{0}) {
		t.Fatalf("checkpoints %v without any acknowledgement, want only the start [0]", o)
	}

	// 2: --once with the state dir: everything acknowledged, checkpoint at the end.
	acking, addr := newAggregator(t, false)
	cfg := withStore(config(logPath, addr, state), rec)
	cfg.Once = true
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("Run --once = %v", err)
	}
	if got := acking.waitEvents(t, 3); !cmp.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Errorf("events = %v, want a1 a2 a3", got)
	}
	fi, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	o := rec.offsets()
	if len(o) == 0 || o[len(o)-1] != fi.Size() {
		t.Fatalf("checkpoints %v, want the last at the end of the file (%d)", o, fi.Size())
	}
	acking.mu.Lock()
	src := acking.sources[0]
	replay := acking.hellos[0].Replay
	acking.mu.Unlock()
	if src.GetFile() == "" || src.GetOffset() != uint64(len(noise)) {
		t.Errorf("source of a1 = %v, want offset %d in a named file", src, len(noise))
	}
	if !replay {
		t.Error("hello of --once is not marked replay")
	}

	// 3: resume from the checkpoint: only the appended event is sent.
	resumed, addr := newAggregator(t, false)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { errc <- Run(ctx, withStore(config(logPath, addr, state), rec)) }()
	appendFile(t, logPath, noise+tokenLine("b1"))
	if got := resumed.waitEvents(t, 1); !cmp.Equal(got, []string{"b1"}) {
		t.Errorf("events after resume = %v, want only b1", got)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run after stop = %v, want nil", err)
	}
}

func TestOnceUnreachable(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	appendFile(t, logPath, tokenLine("a1"))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	cfg := config(logPath, addr, "")
	cfg.Once = true
	cfg.OnceTimeout = 200 * time.Millisecond
	err = Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("Run --once without an aggregator = %v, want a not reachable error", err)
	}
}

func TestValidate(t *testing.T) {
	good := Config{AuditLog: "/a/audit.log", Cluster: "prod", NodeName: "cp-1", Aggregator: "agg.example:7443",
		TLSCert: "c.pem", TLSKey: "k.pem", TLSCA: "ca.pem", StartAt: "end", OnceTimeout: time.Minute}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"good", func(*Config) {}, ""},
		{"good insecure", func(c *Config) {
			c.TLSCert, c.TLSKey, c.TLSCA, c.Insecure, c.Aggregator = "", "", "", true, "[::1]:7443"
		}, ""},
		{"no audit log", func(c *Config) { c.AuditLog = "" }, "--audit-log: must not be empty"},
		{"cluster with slash", func(c *Config) { c.Cluster = "a/b" }, `--cluster: cluster name "a/b": character '/' not allowed (want a-z A-Z 0-9 . - _)`},
		{"no node", func(c *Config) { c.NodeName = "" }, "--node-name is required when $NODE_NAME and the hostname are empty"},
		{"bad port", func(c *Config) { c.Aggregator = "agg:https" }, `--aggregator "agg:https": port "https" is not a number`},
		{"no ca", func(c *Config) { c.TLSCA = "" }, "--tls-ca is required with --tls-cert and --tls-key"},
		{"no cert", func(c *Config) { c.TLSCert = "" }, "--tls-cert is required with --tls-key and --tls-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mod(&c)
			err := c.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestBoundFits: a bounded event always fits the stream, so a token create
// is never too large to send.
func TestBoundFits(t *testing.T) {
	if wire.MaxBoundedBytes > sender.MaxEventBytes {
		t.Errorf("bounded events reach %d bytes, over the %d-byte limit of one event", wire.MaxBoundedBytes, sender.MaxEventBytes)
	}
}

// TestOversizedEventsAlertWithActor: a token create too large for the
// stream (a TokenRequest padded to just under the apiserver's 3 MiB body
// limit, a 3 MiB annotation, a 4 MiB user agent) is sent with its large
// fields cut and marked, with its actor and target, instead of becoming a
// loss without them.
func TestOversizedEventsAlertWithActor(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	line := func(id, field string) string {
		l := strings.Replace(tokenLine(id), `"user":{"username":"alice"`, `"user":{"username":"mallory-`+id+`"`, 1)
		return strings.Replace(l, `"sourceIPs"`, field+`,"sourceIPs"`, 1)
	}
	padded := line("padded", `"requestObject":{"kind":"TokenRequest","spec":{"audiences":["`+strings.Repeat("a", 3145500)+`"]}}`)
	if len(padded) < 3<<20 {
		t.Fatalf("padded line of %d bytes, want over 3 MiB", len(padded))
	}
	annotated := line("annotated", `"annotations":{"x":"`+strings.Repeat("y", 3<<20)+`","authorization.k8s.io/decision":"allow"}`)
	agent := line("agent", `"userAgent":"`+strings.Repeat("x", 4<<20)+`"`)
	appendFile(t, logPath, tokenLine("a1")+padded+annotated+agent+tokenLine("a2"))
	agg, addr := newAggregator(t, false)
	cfg := config(logPath, addr, "")
	cfg.Once = true
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("Run --once = %v", err)
	}
	agg.waitEvents(t, 5)
	got := map[string]string{}
	for _, e := range agg.tokenEvents() {
		if proto.Size(e) > sender.MaxEventBytes {
			t.Errorf("event %s of %d bytes sent", e.GetAuditId(), proto.Size(e))
		}
		if e.GetObjectRef().GetName() != "app" || e.GetObjectRef().GetNamespace() != "team-a" {
			t.Errorf("event %s: target %v", e.GetAuditId(), e.GetObjectRef())
		}
		got[e.GetAuditId()] = e.GetUser().GetUsername() + " " + strings.Join(e.GetTruncated(), ",")
	}
	want := map[string]string{
		"a1": "alice ", "a2": "alice ",
		"padded":    "mallory-padded requestObject.spec.audiences",
		"annotated": "mallory-annotated annotations",
		"agent":     "mallory-agent userAgent",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events sent (-want +got):\n%s", diff)
	}
}

// TestOverLongLineAlertsWithActor: a token create on a line over the
// follower's 16 MiB bound, and one with a field of the wrong JSON type, are
// sent with their actor and target and marked; the over-long lines are
// still reported.
func TestOverLongLineAlertsWithActor(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	pad := strings.Repeat("p", 17<<20)
	long := strings.Replace(tokenLine("long"), `"user":{"username":"alice"`, `"user":{"username":"mallory"`, 1)
	long = strings.Replace(long, `"sourceIPs"`, `"annotations":{"x":"`+pad+`"},"sourceIPs"`, 1)
	other := `{"verb":"create","objectRef":{"resource":"configmaps"},"requestObject":{"data":"` + pad + `"}}` + "\n"
	typed := strings.Replace(tokenLine("typed"), `"code":201`, `"code":"201"`, 1)
	appendFile(t, logPath, tokenLine("a1")+long+other+typed+tokenLine("a2"))
	agg, addr := newAggregator(t, false)
	cfg := config(logPath, addr, "")
	cfg.Once = true
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("Run --once = %v", err)
	}
	all := agg.waitEvents(t, 6)
	slices.Sort(all)
	if want := []string{"a1", "a2", "long", "loss:line_too_long", "loss:line_too_long", "typed"}; !cmp.Equal(all, want) {
		t.Errorf("aggregator received %v, want %v", all, want)
	}
	got := map[string]string{}
	for _, e := range agg.tokenEvents() {
		if e.GetObjectRef().GetName() != "app" || e.GetObjectRef().GetNamespace() != "team-a" {
			t.Errorf("event %s: target %v", e.GetAuditId(), e.GetObjectRef())
		}
		got[e.GetAuditId()] = fmt.Sprint(e.GetUser().GetUsername(), e.GetTruncated(), e.GetMalformedFields())
	}
	want := map[string]string{
		"a1": "alice[] []", "a2": "alice[] []",
		"long":  "mallory[annotations] []",
		"typed": "alice[] [responseStatus.code]",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events sent (-want +got):\n%s", diff)
	}
}
