package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwatch/tokenwatch/bench/internal/loadgen"
	"github.com/tokenwatch/tokenwatch/bench/internal/otlpsink"
	"github.com/tokenwatch/tokenwatch/bench/internal/procmem"
	"github.com/tokenwatch/tokenwatch/internal/devca"
	tokenwatchv1 "github.com/tokenwatch/tokenwatch/proto/tokenwatch/v1"
)

func ingest(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	bin := fs.String("bin", "", "directory holding the aggregator binary (required)")
	streamsFlag := fs.String("streams", "1,100,1000", "concurrent agent streams, comma separated")
	transports := fs.String("transports", "plaintext,mtls", "plaintext and/or mtls")
	dur := fs.Duration("duration", 10*time.Second, "how long each load sends")
	withBase := fs.Bool("baseline", true, "also measure the ack-only baseline server (off: aggregator only, for A/B runs)")
	limits := fs.String("limits", "raised", "aggregator per-agent limits: raised (a --config whose limits section lifts the per-agent rates out of the way) or default")
	extra := fs.String("set-limits", "", "extra limits for the aggregator's config, comma separated key=value (e.g. window_bytes=65536,max_buffered_bytes=67108864), for A/B runs of a limit")
	clusters := fs.Int("clusters", 0, "distinct cluster names the streams claim (0: min(streams, 100)); stream i claims bench-(i mod clusters)")
	profile := fs.String("cpuprofile", "", "with $TWBENCH_PPROF (an aggregator built by bench/run.sh profile), write the aggregator's CPU profile of each load to this prefix")
	target := fs.String("target", "", "`HOST:PORT` of an aggregator already running (plaintext, --insecure): send one load of -streams there instead of starting aggregators, and print one line with the acknowledged count")
	events := fs.Int("events", 0, "with -target: events each stream sends, its backlog, all of which must be acknowledged (0: send for -duration)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *events < 0 {
		return fmt.Errorf("-events %d: want 0 or more", *events)
	}
	if *target != "" {
		return ingestTarget(ctx, out, *target, *streamsFlag, *clusters, *events, *dur)
	}
	if *bin == "" {
		return fmt.Errorf("-bin is required")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if *limits != "raised" && *limits != "default" {
		return fmt.Errorf("-limits: %q is neither raised nor default", *limits)
	}
	raised := *limits == "raised"
	limitsYAML, err := limitsConfig(raised, *extra)
	if err != nil {
		return err
	}
	mix, err := loadgen.NewMix(1)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Each load sends for %v, then waits for the last acknowledgement. Events: ResponseComplete token creates from the generator, 99%% by system identities the default exclusions drop, 1%% alerting (unique audit IDs). Batches of 512 events, 16 unacknowledged per stream (the agent's defaults); stream i is node-i of cluster bench-(i mod 100). The aggregator runs with its durable outbox (bbolt state dir) and exports alerts over OTLP/gRPC to a receiver in the harness. %s Baseline: an ack-only AuditStreamService server (separate process, same gRPC and TLS set-up, gRPC's full protobuf decode of every event and nothing else, no state): the plain transport on this machine with the same load generator (the aggregator decodes only the events that may alert, so it can beat it).\n\n", *dur, limitsNote(raised))
	fmt.Fprintln(out, "| transport | streams | baseline: ack-only server, events/s | aggregator events/s | aggregator vs target 300,000/s | alerts exported | aggregator peak RSS (VmHWM) |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|")
	for _, tr := range strings.Split(*transports, ",") {
		if tr != "plaintext" && tr != "mtls" {
			return fmt.Errorf("-transports: %q is neither plaintext nor mtls", tr)
		}
		for _, sf := range strings.Split(*streamsFlag, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(sf))
			if err != nil || n <= 0 {
				return fmt.Errorf("-streams %q: want positive integers", *streamsFlag)
			}
			prof := ""
			if *profile != "" {
				prof = fmt.Sprintf("%s-%s-%d.pprof", *profile, tr, n)
			}
			if err := ingestRow(ctx, out, *bin, self, tr, n, *clusters, *dur, mix, *withBase, prof, limitsYAML); err != nil {
				return err
			}
		}
	}
	return nil
}

// ingestRow measures the aggregator (and the baseline when withBase) with
// one transport and n streams, and prints the table's row.
func ingestRow(ctx context.Context, out io.Writer, bin, self, tr string, n, clusters int, dur time.Duration, mix loadgen.Mix, withBase bool, prof, limitsYAML string) error {
	var base loadgen.Result
	if withBase {
		var err error
		if base, _, err = ingestRun(ctx, bin, self, tr, n, clusters, dur, mix, "-", limitsYAML); err != nil {
			return fmt.Errorf("baseline %s %d streams: %w", tr, n, err)
		}
	}
	agg, st, err := ingestRun(ctx, bin, self, tr, n, clusters, dur, mix, prof, limitsYAML)
	if err != nil {
		return fmt.Errorf("aggregator %s %d streams: %w", tr, n, err)
	}
	baseCell := "-"
	if withBase {
		baseCell = fmt.Sprintf("%.0f", base.PerSecond())
	}
	fmt.Fprintf(out, "| %s | %d | %s | %.0f | %.2fx | %d | %s |\n", tr, n, baseCell, agg.PerSecond(),
		agg.PerSecond()/300000, st.records, mib(st.mem.HWM))
	return nil
}

// ingestTarget sends one load of plaintext streams to the aggregator at
// target and prints what was acknowledged: with events > 0 every stream
// sends that backlog and waits for its acknowledgement (an error when any
// stream fails), otherwise it sends for dur.
func ingestTarget(ctx context.Context, out io.Writer, target, streamsFlag string, clusters, events int, dur time.Duration) error {
	n, err := strconv.Atoi(strings.TrimSpace(streamsFlag))
	if err != nil || n <= 0 {
		return fmt.Errorf("-streams %q: with -target, want one positive integer", streamsFlag)
	}
	mix, err := loadgen.NewMix(1)
	if err != nil {
		return err
	}
	cfg := loadgen.Config{
		Target: target, Streams: n, Clusters: clusters, EventsPerStream: events, Mix: mix,
		Creds: func(string) (credentials.TransportCredentials, error) { return insecure.NewCredentials(), nil },
	}
	if events == 0 {
		cfg.EventsPerStream, cfg.Duration = 1<<40, dur
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return fmt.Errorf("load of %d streams to %s: %w", n, target, err)
	}
	fmt.Fprintf(out, "acknowledged %d events (%d alerting) from %d streams in %v: %.0f events/s\n",
		res.Events, res.Alerting, n, res.Elapsed.Round(time.Millisecond), res.PerSecond())
	return nil
}

// raisedLimits is the aggregator config of -limits raised: per-agent rates
// far above what the load can send, the other limits at their defaults.
const raisedLimits = `limits:
  events_per_second: 100000000
  event_burst: 100000000
  messages_per_second: 1000000
  message_burst: 1000000
`

// limitsConfig returns the aggregator config of -limits and -set-limits, ""
// when it has nothing to set.
func limitsConfig(raised bool, extra string) (string, error) {
	var b strings.Builder
	if raised {
		b.WriteString(raisedLimits)
	}
	for kv := range strings.SplitSeq(extra, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return "", fmt.Errorf("-set-limits: %q is not key=value", kv)
		}
		if b.Len() == 0 {
			b.WriteString("limits:\n")
		}
		fmt.Fprintf(&b, "  %s: %s\n", k, v)
	}
	return b.String(), nil
}

func limitsNote(raised bool) string {
	if raised {
		return "Its rate limits are raised by its config file (limits.events_per_second and event_burst 100,000,000, messages_per_second and message_burst 1,000,000; the defaults, 10,000 events/s and burst 100,000 per cluster, would bind the 1-stream load); the other limits are the defaults."
	}
	return "Its guard limits are the defaults (2,000 events/s per agent, burst 20,000: they bind the 1-stream load)."
}

type ingestStats struct {
	mem     procmem.Mem
	records int64
}

// ingestRun runs one load against a fresh aggregator (profiled into
// profile when set), or, with profile "-", against the ack-only baseline
// server.
func ingestRun(ctx context.Context, bin, self, transport string, streams, clusters int, dur time.Duration, mix loadgen.Mix, profile string, limitsYAML string) (loadgen.Result, ingestStats, error) {
	baseline := profile == "-"
	dir, err := os.MkdirTemp("", "twbench-ingest-")
	if err != nil {
		return loadgen.Result{}, ingestStats{}, err
	}
	defer os.RemoveAll(dir)
	creds, tlsFlags, clusters, err := ingestCreds(dir, transport, streams, clusters)
	if err != nil {
		return loadgen.Result{}, ingestStats{}, err
	}
	p, target, sink, err := startIngestTarget(ctx, bin, self, dir, transport, tlsFlags, baseline, limitsYAML)
	if err != nil {
		return loadgen.Result{}, ingestStats{}, err
	}
	if sink != nil {
		defer sink.Stop()
	}
	defer p.stop()
	profDone := make(chan error, 1)
	if profile != "" && !baseline {
		go func() { profDone <- fetchProfile(ctx, profile, dur) }()
	} else {
		profDone <- nil
	}
	res, err := loadgen.Run(ctx, loadgen.Config{
		Target: target, Creds: creds, Streams: streams, Clusters: clusters, EventsPerStream: 1 << 40, Duration: dur, Mix: mix,
	})
	if err != nil {
		return res, ingestStats{}, fmt.Errorf("%w\n%s", err, p.tail())
	}
	var st ingestStats
	if st.mem, err = procmem.Read(p.cmd.Process.Pid); err != nil {
		return res, st, err
	}
	if err := <-profDone; err != nil {
		return res, st, err
	}
	if sink != nil {
		// Alerts of the last batches may still be in the outbox: wait for the
		// count the load sent, briefly.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = sink.WaitRecords(wctx, res.Alerting)
		cancel()
		st.records = sink.Records()
	}
	return res, st, nil
}

// ingestCreds returns the load's credentials per cluster and the server's
// TLS flags for transport. With mTLS it issues the certificates of the
// clusters (min(streams, 100) when clusters is not set) before the load
// starts, since Creds is called concurrently while connecting, and
// returns that count.
func ingestCreds(dir, transport string, streams, clusters int) (func(string) (credentials.TransportCredentials, error), []string, int, error) {
	creds := func(string) (credentials.TransportCredentials, error) { return insecure.NewCredentials(), nil }
	if transport != "mtls" {
		return creds, nil, clusters, nil
	}
	ca, files, err := devca.WriteSet(filepath.Join(dir, "certs"), devca.Set{})
	if err != nil {
		return nil, nil, 0, err
	}
	tlsFlags := []string{"--tls-cert", files.ServerCert, "--tls-key", files.ServerKey, "--tls-client-ca", files.CA}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	cache := map[string]credentials.TransportCredentials{}
	creds = func(cluster string) (credentials.TransportCredentials, error) {
		if c, ok := cache[cluster]; ok {
			return c, nil
		}
		p, err := ca.Agent("tokenwatch", cluster)
		if err != nil {
			return nil, err
		}
		cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			return nil, err
		}
		c := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12})
		cache[cluster] = c
		return c, nil
	}
	if clusters <= 0 {
		clusters = min(streams, 100)
	}
	for i := range clusters {
		if _, err := creds("bench-" + strconv.Itoa(i)); err != nil {
			return nil, nil, 0, err
		}
	}
	return creds, tlsFlags, clusters, nil
}

// startIngestTarget starts what the load streams to: the acknowledging stub
// (baseline) or the aggregator exporting to an OTLP sink, which it returns.
func startIngestTarget(ctx context.Context, bin, self, dir, transport string, tlsFlags []string, baseline bool, limitsYAML string) (*proc, string, *otlpsink.Sink, error) {
	if baseline {
		target, err := freeAddr()
		if err != nil {
			return nil, "", nil, err
		}
		args := append([]string{"acksrv", "-listen", target}, tlsFlags...)
		p, err := start("acksrv", dir, self, args...)
		if err != nil {
			return nil, "", nil, err
		}
		if err := waitTCP(ctx, p, target); err != nil {
			p.stop()
			return nil, "", nil, err
		}
		return p, target, nil, nil
	}
	sink, err := otlpsink.Start("127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	aggFlags := tlsFlags
	if transport != "mtls" {
		aggFlags = []string{"--insecure"}
	}
	if limitsYAML != "" {
		cfg := filepath.Join(dir, "aggregator.yaml")
		if err := os.WriteFile(cfg, []byte(limitsYAML), 0o644); err != nil {
			sink.Stop()
			return nil, "", nil, err
		}
		aggFlags = append(aggFlags, "--config", cfg)
	}
	p, target, err := startAggregator(ctx, bin, dir, sink.Addr(), aggFlags...)
	if err != nil {
		sink.Stop()
		return nil, "", nil, err
	}
	return p, target, sink, nil
}

// waitTCP waits until addr accepts connections.
func waitTCP(ctx context.Context, p *proc, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on %s: %w", p.name, addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ackServer is the ingest baseline: it welcomes and acknowledges every
// batch, nothing else.
type ackServer struct {
	tokenwatchv1.UnimplementedAuditStreamServiceServer
}

func (ackServer) Stream(st grpc.BidiStreamingServer[tokenwatchv1.StreamRequest, tokenwatchv1.StreamResponse]) error {
	if _, err := st.Recv(); err != nil {
		return err
	}
	if err := st.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Welcome{Welcome: &tokenwatchv1.Welcome{}}}); err != nil {
		return err
	}
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if b := req.GetBatch(); b != nil {
			if err := st.Send(&tokenwatchv1.StreamResponse{Msg: &tokenwatchv1.StreamResponse_Ack{Ack: &tokenwatchv1.Ack{Seq: b.Seq}}}); err != nil {
				return err
			}
		}
	}
}

// acksrv serves the ack-only baseline until ctx ends.
func acksrv(ctx context.Context, args []string, _ io.Writer) error {
	fs := flag.NewFlagSet("acksrv", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "gRPC address")
	cert := fs.String("tls-cert", "", "server certificate (mTLS when given)")
	key := fs.String("tls-key", "", "server key")
	clientCA := fs.String("tls-client-ca", "", "CA of client certificates")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var opts []grpc.ServerOption
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			return err
		}
		caPEM, err := os.ReadFile(*clientCA)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
			MinVersion: tls.VersionTLS12,
		})))
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(opts...)
	tokenwatchv1.RegisterAuditStreamServiceServer(srv, ackServer{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		srv.Stop()
		<-done
		return nil
	case err := <-done:
		return err
	}
}

// fetchProfile writes the CPU profile of the process serving pprof at
// $TWBENCH_PPROF over most of the load to path.
func fetchProfile(ctx context.Context, path string, dur time.Duration) error {
	addr := os.Getenv("TWBENCH_PPROF")
	if addr == "" {
		return fmt.Errorf("-cpuprofile needs $TWBENCH_PPROF and an aggregator built by bench/run.sh profile")
	}
	secs := max(1, int(dur.Seconds())-1)
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs)
	var lastErr error
	for range 50 { // the server comes up with the process
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			lastErr = err
			time.Sleep(20 * time.Millisecond)
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", path, err)
		}
		return f.Close()
	}
	return fmt.Errorf("GET %s: %w", url, lastErr)
}
