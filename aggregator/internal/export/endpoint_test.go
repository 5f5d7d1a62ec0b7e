package export

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenwatch/tokenwatch/internal/devca"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestResolve: the flag and the OTEL_EXPORTER_OTLP_* environment take the
// same forms, the scheme of a URL decides TLS, an insecure setting decides
// for HOST:PORT, and a bad value or a contradiction is an error naming its
// source.
func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		give    Config
		env     map[string]string
		want    Endpoint
		wantErr string
	}{
		{"nothing", Config{}, nil, Endpoint{}, ""},
		{"flag host:port, tls", Config{Endpoint: "collector:4317"}, nil, Endpoint{Target: "collector:4317", From: FlagEndpoint}, ""},
		{"flag host:port, insecure", Config{Endpoint: "10.9.9.9:4317", Insecure: true}, nil, Endpoint{Target: "10.9.9.9:4317", Insecure: true, From: FlagEndpoint}, ""},
		{"flag http url", Config{Endpoint: "http://localhost:4317"}, nil, Endpoint{Target: "localhost:4317", Insecure: true, From: FlagEndpoint}, ""},
		{"flag http url with insecure", Config{Endpoint: "http://localhost:4317", Insecure: true}, nil, Endpoint{Target: "localhost:4317", Insecure: true, From: FlagEndpoint}, ""},
		{"flag https url, default port", Config{Endpoint: "https://collector"}, nil, Endpoint{Target: "collector:4317", From: FlagEndpoint}, ""},
		{"flag https url, slash", Config{Endpoint: "https://collector:443/"}, nil, Endpoint{Target: "collector:443", From: FlagEndpoint}, ""},
		{"flag ipv6", Config{Endpoint: "http://[::1]:4317"}, nil, Endpoint{Target: "[::1]:4317", Insecure: true, From: FlagEndpoint}, ""},
		{"flag wins over env", Config{Endpoint: "a:1"}, map[string]string{EnvEndpoint: "http://b:2"}, Endpoint{Target: "a:1", From: FlagEndpoint}, ""},
		{"env host:port, tls", Config{}, map[string]string{EnvEndpoint: "10.9.9.9:4317"}, Endpoint{Target: "10.9.9.9:4317", From: EnvEndpoint}, ""},
		{"env host:port, env insecure", Config{}, map[string]string{EnvEndpoint: "10.9.9.9:4317", EnvInsecure: "TRUE"}, Endpoint{Target: "10.9.9.9:4317", Insecure: true, From: EnvEndpoint}, ""},
		{"env host:port, flag insecure", Config{Insecure: true}, map[string]string{EnvEndpoint: "10.9.9.9:4317"}, Endpoint{Target: "10.9.9.9:4317", Insecure: true, From: EnvEndpoint}, ""},
		{"logs env first", Config{}, map[string]string{EnvEndpoint: "http://b:2", EnvLogsEndpoint: "https://a:1"}, Endpoint{Target: "a:1", From: EnvLogsEndpoint}, ""},
		{"logs insecure first", Config{}, map[string]string{EnvEndpoint: "a:1", EnvInsecure: "false", EnvLogsInsecure: "true"}, Endpoint{Target: "a:1", Insecure: true, From: EnvEndpoint}, ""},
		{"env tls files", Config{}, map[string]string{EnvEndpoint: "https://a:1", EnvCertificate: "ca.pem", EnvClientCertificate: "c.pem", EnvClientKey: "k.pem"},
			Endpoint{Target: "a:1", From: EnvEndpoint, CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem"}, ""},
		{"protocol grpc", Config{Endpoint: "a:1"}, map[string]string{EnvProtocol: "grpc"}, Endpoint{Target: "a:1", From: FlagEndpoint}, ""},

		{"https with flag insecure", Config{Endpoint: "https://collector:4317", Insecure: true}, nil, Endpoint{}, "--otlp-endpoint \"https://collector:4317\": the https scheme means TLS, but --otlp-insecure says plaintext"},
		{"env https with env insecure", Config{}, map[string]string{EnvEndpoint: "https://c:1", EnvInsecure: "true"}, Endpoint{}, EnvEndpoint + " \"https://c:1\": the https scheme means TLS, but " + EnvInsecure},
		{"env http with env insecure false", Config{}, map[string]string{EnvLogsEndpoint: "http://c:1", EnvInsecure: "false"}, Endpoint{}, EnvLogsEndpoint + " \"http://c:1\": the http scheme means plaintext, but " + EnvInsecure + "=false says TLS"},
		{"bad insecure value", Config{Endpoint: "a:1"}, map[string]string{EnvInsecure: "yes"}, Endpoint{}, EnvInsecure + "=\"yes\": want true or false"},
		{"protocol http", Config{Endpoint: "a:1"}, map[string]string{EnvProtocol: "http/protobuf"}, Endpoint{}, EnvProtocol + "=\"http/protobuf\": only grpc"},
		{"logs protocol http", Config{}, map[string]string{EnvProtocol: "grpc", EnvLogsProtocol: "http/json"}, Endpoint{}, EnvLogsProtocol + "=\"http/json\": only grpc"},
		{"no port", Config{Endpoint: "collector"}, nil, Endpoint{}, "--otlp-endpoint \"collector\": want HOST:PORT or a URL"},
		{"env no port", Config{}, map[string]string{EnvEndpoint: "collector"}, Endpoint{}, EnvEndpoint + " \"collector\": want HOST:PORT"},
		{"bad port", Config{Endpoint: "collector:http"}, nil, Endpoint{}, "port \"http\""},
		{"port zero", Config{Endpoint: "http://collector:0"}, nil, Endpoint{}, "port \"0\""},
		{"empty port", Config{Endpoint: "http://collector:"}, nil, Endpoint{}, "empty port"},
		{"no host", Config{Endpoint: ":4317"}, nil, Endpoint{}, "no host"},
		{"url no host", Config{Endpoint: "https://:4317"}, nil, Endpoint{}, "no host"},
		{"other scheme", Config{}, map[string]string{EnvEndpoint: "unix:///run/otel.sock"}, Endpoint{}, "scheme \"unix\""},
		{"path", Config{Endpoint: "http://collector:4318/v1/logs"}, nil, Endpoint{}, "no path"},
		{"query", Config{Endpoint: "http://collector:4317?x=1"}, nil, Endpoint{}, "no path"},
		{"user", Config{Endpoint: "https://u:p@collector:4317"}, nil, Endpoint{}, "no path"},
		{"path without scheme", Config{Endpoint: "collector:4317/x"}, nil, Endpoint{}, "want HOST:PORT"},
		{"client cert without key", Config{}, map[string]string{EnvEndpoint: "a:1", EnvLogsClientCertificate: "c.pem"}, Endpoint{}, "give both or neither"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.give.Resolve(envOf(tt.env))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Resolve() error = %v, want %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("Resolve() error %q: want one line", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Resolve() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlaintextRemote(t *testing.T) {
	tests := []struct {
		give Endpoint
		want bool
	}{
		{Endpoint{}, false},
		{Endpoint{Target: "collector:4317"}, false},
		{Endpoint{Target: "collector:4317", Insecure: true}, true},
		{Endpoint{Target: "10.0.0.1:4317", Insecure: true}, true},
		{Endpoint{Target: "127.0.0.1:4317", Insecure: true}, false},
		{Endpoint{Target: "[::1]:4317", Insecure: true}, false},
		{Endpoint{Target: "localhost:4317", Insecure: true}, false},
	}
	for _, tt := range tests {
		if got := tt.give.PlaintextRemote(); got != tt.want {
			t.Errorf("%+v.PlaintextRemote() = %v, want %v", tt.give, got, tt.want)
		}
	}
}

// startTLSSink serves a sink over TLS on loopback with a certificate of a
// fresh CA, whose PEM file it returns.
func startTLSSink(t *testing.T) (s *sink, port, caFile string) {
	t.Helper()
	ca, err := devca.New("test collector CA")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Server("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s = &sink{got: make(chan struct{}, 1)}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	collogspb.RegisterLogsServiceServer(srv, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	_, port, _ = net.SplitHostPort(lis.Addr().String())
	return s, port, caFile
}

// TestEndpointFormsExport exports through the real exporter to real
// loopback OTLP/gRPC receivers, one plaintext and one TLS, with the
// endpoint in each form from the flag and from the environment: each
// record arrives, so the form chose the right address and transport.
func TestEndpointFormsExport(t *testing.T) {
	plain, plainAddr, _ := startSink(t, "127.0.0.1:0")
	_, plainPort, _ := net.SplitHostPort(plainAddr)
	secure, tlsPort, caFile := startTLSSink(t)
	tests := []struct {
		name string
		cfg  Config
		env  map[string]string
		to   *sink
	}{
		{"flag host:port insecure", Config{Endpoint: "127.0.0.1:" + plainPort, Insecure: true}, nil, plain},
		{"flag http url", Config{Endpoint: "http://127.0.0.1:" + plainPort}, nil, plain},
		{"flag http localhost", Config{Endpoint: "http://localhost:" + plainPort}, nil, plain},
		{"env http url", Config{}, map[string]string{EnvEndpoint: "http://127.0.0.1:" + plainPort}, plain},
		{"env host:port, env insecure", Config{}, map[string]string{EnvEndpoint: "127.0.0.1:" + plainPort, EnvInsecure: "true"}, plain},
		{"logs env host:port, flag insecure", Config{Insecure: true}, map[string]string{EnvLogsEndpoint: "127.0.0.1:" + plainPort}, plain},
		{"flag https url", Config{Endpoint: "https://localhost:" + tlsPort}, map[string]string{EnvCertificate: caFile}, secure},
		{"flag host:port tls", Config{Endpoint: "127.0.0.1:" + tlsPort}, map[string]string{EnvLogsCertificate: caFile}, secure},
		{"env host:port tls", Config{}, map[string]string{EnvEndpoint: "127.0.0.1:" + tlsPort, EnvCertificate: caFile}, secure},
		{"env https url", Config{}, map[string]string{EnvLogsEndpoint: "https://127.0.0.1:" + tlsPort, EnvCertificate: caFile}, secure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(tt.to.records())
			exp, err := New(context.Background(), tt.cfg, envOf(tt.env), nil)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer exp.Shutdown(context.Background())
			if _, ok := exp.(*OTLP); !ok {
				t.Fatalf("New = %T, want *OTLP", exp)
			}
			rec := sampleRecords()[:1]
			rec[0].Body = tt.name
			if err := exp.Export(context.Background(), rec); err != nil {
				t.Fatalf("Export: %v", err)
			}
			got := tt.to.records()
			if len(got) != before+1 || got[before].Body.GetStringValue() != tt.name {
				t.Errorf("receiver holds %d records (last %v), want %d, the last %q", len(got), got[len(got)-1].Body, before+1, tt.name)
			}
		})
	}
}
