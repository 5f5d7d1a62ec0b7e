package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"

	"github.com/tokenwatch/tokenwatch/internal/lineage"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// lineageAggregator is a recording stub of a lineage aggregator: it
// welcomes with LineageSettings (unless off), pushes a reset holding the
// watches it pushed before (none on its first stream), and
// answers each batch with a WatchUpdate for the tokens its events minted,
// then the batch's Ack.
type lineageAggregator struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	off bool

	mu      sync.Mutex
	watches []*tokenwatchv1.Watch // pushed so far: the next stream's reset holds them
	hellos  []*tokenwatchv1.Hello
	events  []string
	uses    []*tokenwatchv1.LineageEvent
	counts  []*tokenwatchv1.UseCount
	losses  []string
}

func newLineageAggregator(t *testing.T, off bool) (*lineageAggregator, string) {
	t.Helper()
	a := &lineageAggregator{off: off}
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

func (a *lineageAggregator) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.hellos = append(a.hellos, first.GetHello())
	reset := &tokenwatchv1.WatchUpdate{Reset_: true, Add: a.watches}
	a.mu.Unlock()
	w := &tokenwatchv1.Welcome{}
	if !a.off {
		w.Lineage = &tokenwatchv1.LineageSettings{LookbackMs: 120000}
	}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	if !a.off {
		if err := a.push(stream, reset); err != nil {
			return err
		}
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if b := req.GetBatch(); b != nil {
			if err := a.batch(stream, b); err != nil {
				return err
			}
		}
	}
}

func (a *lineageAggregator) push(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse], u *tokenwatchv1.WatchUpdate) error {
	return stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: u}})
}

// batch records b, pushes the watches of the tokens it minted, then acks.
func (a *lineageAggregator) batch(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse], b *tokenwatchv1.Batch) error {
	u := &tokenwatchv1.WatchUpdate{}
	a.mu.Lock()
	for _, e := range b.Events {
		a.events = append(a.events, e.AuditId)
		if jti, ok := strings.CutPrefix(e.Annotations[lineage.AnnotationIssuedCredentialID], "JTI="); ok {
			u.Add = append(u.Add, &tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: jti})
		}
	}
	a.watches = append(a.watches, u.Add...)
	a.uses = append(a.uses, b.Uses...)
	a.counts = append(a.counts, b.Counts...)
	for _, l := range b.Losses {
		a.losses = append(a.losses, l.Reason)
	}
	a.mu.Unlock()
	if len(u.Add) > 0 && !a.off {
		if err := a.push(stream, u); err != nil {
			return err
		}
	}
	return stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}})
}

const (
	jtiMint   = "5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a51"
	legacySA  = "system:serviceaccount:team-b:old"
	lineageTS = "2026-11-26T23:09:26.000000Z"
)

// mintLine is a token create that minted jti.
func mintLine(id, jti string) string {
	l := tokenLine(id)
	return strings.Replace(l, `"stageTimestamp"`, `"annotations":{"authentication.kubernetes.io/issued-credential-id":"JTI=`+jti+`"},"stageTimestamp"`, 1)
}

// requestLine is a request made with the token jti (or, with legacy, a
// legacy Secret-based token of legacySA) from ip.
func requestLine(id, jti, ip, verb, resource, ns string, legacy bool) string {
	user := `{"username":"system:serviceaccount:team-a:app","extra":{"authentication.kubernetes.io/credential-id":["JTI=` + jti + `"]}}`
	ann := ""
	if legacy {
		user = `{"username":"` + legacySA + `"}`
		ann = `,"annotations":{"authentication.k8s.io/legacy-token":"` + legacySA + `"}`
	}
	return fmt.Sprintf(`{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":%q,"stage":"ResponseComplete","requestURI":"/api/v1/namespaces/%s/%s","verb":%q,"user":%s,"sourceIPs":[%q],"objectRef":{"resource":%q,"namespace":%q,"apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":%q,"stageTimestamp":%q%s}`+"\n",
		id, ns, resource, verb, user, ip, resource, ns, lineageTS, lineageTS, ann)
}

// TestOnceLineage replays a log holding a mint and its uses, before and
// after it in the same file: the token create goes as an event, the first
// use per reason key as a use found by the lookback (the lines were read
// before the watch arrived), the rest as counts, a legacy-token request as
// a count only.
func TestOnceLineage(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	content := requestLine("before", jtiMint, "10.0.0.1", "get", "configmaps", "team-a", false) +
		noise + mintLine("mint", jtiMint) +
		requestLine("u1", jtiMint, "10.0.0.1", "get", "configmaps", "team-a", false) +
		requestLine("u2", jtiMint, "10.0.0.2", "list", "secrets", "kube-system", false) +
		requestLine("u3", jtiMint, "10.0.0.2", "list", "secrets", "kube-system", false) +
		requestLine("legacy", "", "10.0.0.7", "get", "pods", "team-b", true)
	if err := os.WriteFile(logPath, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	agg, addr := newLineageAggregator(t, false)
	cfg := config(logPath, addr, "")
	cfg.Once = true
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("Run --once = %v", err)
	}
	agg.mu.Lock()
	defer agg.mu.Unlock()
	if f := agg.hellos[0].Features; !cmp.Equal(f, []string{"lineage"}) {
		t.Errorf("Hello.Features = %q, want [lineage]", f)
	}
	if !cmp.Equal(agg.events, []string{"mint"}) {
		t.Errorf("events = %v, want the mint", agg.events)
	}
	var got []string
	for _, u := range agg.uses {
		got = append(got, fmt.Sprintf("%s lookback=%v", u.Event.AuditId, u.Lookback))
	}
	want := []string{"before lookback=true", "u2 lookback=true"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("uses (-want +got):\n%s", diff)
	}
	counts := map[string]uint64{}
	for _, c := range agg.counts {
		counts[c.Kind.String()+" "+c.Key] += c.Uses
	}
	wantCounts := map[string]uint64{
		"LINEAGE_KIND_TOKEN " + jtiMint:         2, // u1 (the IP of "before"), u3 (the IP and action of u2)
		"LINEAGE_KIND_LEGACY_TOKEN " + legacySA: 1,
	}
	if diff := cmp.Diff(wantCounts, counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if len(agg.losses) > 0 {
		t.Errorf("losses %v", agg.losses)
	}
}

// TestOnceLineageOff: an aggregator that does not welcome lineage gets
// the token creates and no use or count.
func TestOnceLineageOff(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	content := mintLine("mint", jtiMint) + requestLine("u1", jtiMint, "10.0.0.1", "get", "configmaps", "team-a", false) +
		requestLine("legacy", "", "10.0.0.7", "get", "pods", "team-b", true)
	if err := os.WriteFile(logPath, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	agg, addr := newLineageAggregator(t, true)
	cfg := config(logPath, addr, "")
	cfg.Once = true
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("Run --once = %v", err)
	}
	agg.mu.Lock()
	defer agg.mu.Unlock()
	if !cmp.Equal(agg.events, []string{"mint"}) || len(agg.uses)+len(agg.counts) > 0 {
		keys := make([]string, 0)
		for _, c := range agg.counts {
			keys = append(keys, c.Key)
		}
		sort.Strings(keys)
		t.Errorf("events %v, %d uses, counts %v; want the mint alone", agg.events, len(agg.uses), keys)
	}
}

// TestOnceLineageRestart: a long-running request (an exec) of a watched
// token started before the agent stopped and ended after it counts once:
// its start is a use, and its end, read by the next run from the
// checkpoint, is neither sent nor counted. The next run's log holds no
// mint: its watch comes from the aggregator's reset, which the replay
// waits for.
func TestOnceLineageRestart(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	exec := func(stage string) string {
		l := requestLine("exec", jtiMint, "10.0.0.3", "create", "pods", "team-a", false)
		l = strings.Replace(l, `"stage":"ResponseComplete"`, `"stage":"`+stage+`"`, 1)
		return strings.Replace(l, `"namespace":"team-a"`, `"namespace":"team-a","subresource":"exec"`, 1)
	}
	if err := os.WriteFile(logPath, []byte(mintLine("mint", jtiMint)+exec("ResponseStarted")), 0o600); err != nil {
		t.Fatal(err)
	}
	agg, addr := newLineageAggregator(t, false)
	cfg := config(logPath, addr, filepath.Join(dir, "state"))
	cfg.Once = true
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("first Run --once = %v", err)
	}
	appendFile(t, logPath, exec("ResponseComplete")+requestLine("u1", jtiMint, "10.0.0.3", "get", "configmaps", "team-a", false))
	if err := Run(context.Background(), cfg); err != nil {
		t.Fatalf("second Run --once = %v", err)
	}
	agg.mu.Lock()
	defer agg.mu.Unlock()
	var uses []string
	for _, u := range agg.uses {
		uses = append(uses, u.Event.AuditId+" "+u.Event.Stage)
	}
	// u1 is the second run's first use from its IP (the aggregator knows
	// that reason key already and drops it).
	if diff := cmp.Diff([]string{"exec ResponseStarted", "u1 ResponseComplete"}, uses); diff != "" {
		t.Errorf("uses (-want +got):\n%s", diff)
	}
	for _, c := range agg.counts {
		t.Errorf("counted %d requests of %s, want none (the exec's end is not a request of its own)", c.Uses, c.Key)
	}
}
