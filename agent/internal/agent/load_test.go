package agent

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwatch/tokenwatch/internal/lineage"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

// TestLineageLoad is the aggregator and the audit log of the lineage memory
// benchmark (bench/lineage-rss.sh), not a unit test: it runs only when
// TOKENWATCH_LINEAGE_LOAD names a directory. It serves a lineage
// aggregator on loopback (its address in DIR/addr) that pushes
// LOAD_WATCHES token watches (10,000) on each stream and a watch for every
// token minted (from its mint time, as the aggregator's), and, once an agent connects, writes DIR/audit.log at
// LOAD_RATE lines/s (2,000) for LOAD_DURATION (150s); LOAD_LINEAGE_OFF
// welcomes without lineage (the baseline): LOAD_JTI_PERCENT
// (60) of the lines carry a JTI credential, one in ten of those a watched
// token's and one in a hundred the newest minted token's; one token
// create a second. The log is rotated (renamed) every
// 64 MiB and rotated files beyond two are deleted.
func TestLineageLoad(t *testing.T) {
	dir := os.Getenv("TOKENWATCH_LINEAGE_LOAD")
	if dir == "" {
		t.Skip("the lineage load of bench/lineage-rss.sh: set TOKENWATCH_LINEAGE_LOAD")
	}
	env := func(name string, def int) int {
		if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
			return v
		}
		return def
	}
	duration := 150 * time.Second
	if d, err := time.ParseDuration(os.Getenv("LOAD_DURATION")); err == nil && d > 0 {
		duration = d
	}
	agg := &loadAggregator{watched: make([]string, env("LOAD_WATCHES", 10000)), hello: make(chan struct{}), off: os.Getenv("LOAD_LINEAGE_OFF") != ""}
	for i := range agg.watched {
		agg.watched[i] = uuid()
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, agg)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	if err := os.WriteFile(filepath.Join(dir, "addr"), []byte(lis.Addr().String()), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-agg.hello:
	case <-time.After(time.Minute): // a failure bound
		t.Fatal("no agent connected")
	}
	w := &loadWriter{dir: dir, watched: agg.watched, jtiPercent: env("LOAD_JTI_PERCENT", 60)}
	if err := w.run(env("LOAD_RATE", 2000), duration); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("load: %d lines written (%d MiB), %d batches, %d events, %d uses, %d counts received\n",
		w.lines, w.bytes>>20, agg.batches.Load(), agg.events.Load(), agg.uses.Load(), agg.counts.Load())
}

// loadAggregator acknowledges everything and pushes watches.
type loadAggregator struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
	watched []string
	off     bool // welcome without lineage: the baseline
	hello   chan struct{}
	once    sync.Once

	batches, events, uses, counts atomic.Uint64
}

func (a *loadAggregator) Stream(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	w := &tokenwatchv1.Welcome{Lineage: &tokenwatchv1.LineageSettings{LookbackMs: 120000}}
	if a.off {
		w.Lineage = nil
	}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	if a.off {
		a.once.Do(func() { close(a.hello) })
		return a.ackAll(stream)
	}
	// As the aggregator: each watch from its mint time until its expiry.
	now := time.Now()
	reset := &tokenwatchv1.WatchUpdate{Reset_: true}
	for _, jti := range a.watched {
		reset.Add = append(reset.Add, &tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: jti,
			From: timestamppb.New(now.Add(-time.Hour)), Until: timestamppb.New(now.Add(47 * time.Hour))})
	}
	if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: reset}}); err != nil {
		return err
	}
	a.once.Do(func() { close(a.hello) })
	return a.ackAll(stream)
}

// ackAll records and acknowledges batches, pushing the watches of the
// tokens they minted first, until the stream ends.
func (a *loadAggregator) ackAll(stream grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
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
			continue
		}
		a.batches.Add(1)
		a.events.Add(uint64(len(b.Events)))
		a.uses.Add(uint64(len(b.Uses)))
		a.counts.Add(uint64(len(b.Counts)))
		u := &tokenwatchv1.WatchUpdate{}
		for _, e := range b.Events {
			if jti, ok := strings.CutPrefix(e.Annotations[lineage.AnnotationIssuedCredentialID], "JTI="); ok {
				from, _ := time.Parse(time.RFC3339Nano, e.RequestReceivedTimestamp)
				u.Add = append(u.Add, &tokenwatchv1.Watch{Kind: tokenwatchv1.LineageKind_LINEAGE_KIND_TOKEN, Key: jti,
					From: timestamppb.New(from), Until: timestamppb.New(from.Add(time.Hour))})
			}
		}
		if len(u.Add) > 0 && !a.off {
			if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Watch{Watch: u}}); err != nil {
				return err
			}
		}
		if err := stream.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}}); err != nil {
			return err
		}
	}
}

// loadWriter writes the load's audit log.
type loadWriter struct {
	dir        string
	watched    []string
	jtiPercent int

	f            *os.File
	size         int64
	rotated      []string
	lastMint     string
	lines, bytes int64
}

const loadRotateSize = 64 << 20

func (w *loadWriter) run(rate int, d time.Duration) error {
	path := filepath.Join(w.dir, "audit.log")
	var err error
	if w.f, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		return err
	}
	defer func() { w.f.Close() }()
	const tick = 10 * time.Millisecond
	perTick := max(1, rate*int(tick)/int(time.Second))
	t := time.NewTicker(tick)
	defer t.Stop()
	end := time.Now().Add(d)
	var n int
	var buf []byte
	for now := range t.C {
		if now.After(end) {
			return nil
		}
		buf = buf[:0]
		for range perTick {
			buf = append(buf, w.line(n)...)
			n++
		}
		if _, err := w.f.Write(buf); err != nil {
			return err
		}
		w.lines += int64(perTick)
		w.bytes += int64(len(buf))
		if w.size += int64(len(buf)); w.size >= loadRotateSize {
			if err := w.rotate(path); err != nil {
				return err
			}
		}
	}
	return nil
}

// rotate renames the log away as lumberjack does and keeps two backups.
func (w *loadWriter) rotate(path string) error {
	w.f.Close()
	backup := filepath.Join(w.dir, "audit-"+time.Now().UTC().Format("2006-01-02T15-04-05.000")+".log")
	if err := os.Rename(path, backup); err != nil {
		return err
	}
	w.rotated = append(w.rotated, backup)
	if len(w.rotated) > 2 {
		if err := os.Remove(w.rotated[0]); err != nil {
			return err
		}
		w.rotated = w.rotated[1:]
	}
	var err error
	w.f, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	w.size = 0
	return err
}

// line is the n-th line: a token create once a second (at 2,000 lines/s),
// else a request, with a JTI credential for jtiPercent of them.
func (w *loadWriter) line(n int) string {
	ts := time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")
	if n%2000 == 0 {
		w.lastMint = uuid()
		return strings.Replace(strings.Replace(mintLine(fmt.Sprintf("mint-%d", n), w.lastMint),
			"2026-11-26T23:09:25.383216Z", ts, 1), "2026-11-26T23:09:25.386281Z", ts, 1)
	}
	ip := fmt.Sprintf("10.%d.%d.%d", n%7, n%11, n%13)
	if n%100 < w.jtiPercent {
		jti := uuid()
		switch {
		case n%10 == 0:
			jti = w.watched[n%len(w.watched)]
		case n%100 == 1:
			jti = w.lastMint // the newest token's uses, found live or by the lookback
		}
		return strings.ReplaceAll(requestLine(fmt.Sprintf("r-%d", n), jti, ip, "get", "configmaps", "team-a", false), lineageTS, ts)
	}
	return fmt.Sprintf(`{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"r-%d","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/kube-system/leases/kube-scheduler","verb":"update","user":{"username":"system:kube-scheduler","groups":["system:authenticated"]},"sourceIPs":[%q],"userAgent":"kube-scheduler/v1.35.4 (linux/amd64) kubernetes/abcdef0/leader-election","objectRef":{"resource":"leases","namespace":"kube-system","name":"kube-scheduler","apiGroup":"coordination.k8s.io","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":%q,"stageTimestamp":%q,"annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:kube-scheduler\" of ClusterRole \"system:kube-scheduler\" to User \"system:kube-scheduler\""}}`+"\n",
		n, ip, ts, ts)
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
