package export

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

// The OpenTelemetry specification's exporter environment variables that
// tokenwatch reads itself (the per-signal LOGS_ form first), so that the
// flag and the environment accept the same forms and a mistake stops the
// start instead of sending alerts elsewhere.
const (
	EnvLogsInsecure          = "OTEL_EXPORTER_OTLP_LOGS_INSECURE"
	EnvInsecure              = "OTEL_EXPORTER_OTLP_INSECURE"
	EnvLogsProtocol          = "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"
	EnvProtocol              = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvLogsCertificate       = "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE"
	EnvCertificate           = "OTEL_EXPORTER_OTLP_CERTIFICATE"
	EnvLogsClientCertificate = "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE"
	EnvClientCertificate     = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
	EnvLogsClientKey         = "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY"
	EnvClientKey             = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
)

// FlagEndpoint and FlagInsecure name the flags in messages and in
// Endpoint.From.
const (
	FlagEndpoint = "--otlp-endpoint"
	FlagInsecure = "--otlp-insecure"
)

// Protocol is the only OTLP protocol tokenwatch speaks.
const Protocol = "grpc"

// defaultPort is OTLP/gRPC's port, for a URL without one.
const defaultPort = "4317"

// Endpoint is where and how records are exported, resolved from the flags
// and the environment.
type Endpoint struct {
	// Target is the collector's HOST:PORT; empty means stdout.
	Target string
	// Insecure is plaintext gRPC; otherwise TLS.
	Insecure bool
	// From names what gave Target: FlagEndpoint or an environment variable.
	From string
	// CAFile, CertFile and KeyFile are the environment's PEM files for TLS:
	// the collector's CA (empty: the system roots) and a client
	// certificate (both or neither).
	CAFile, CertFile, KeyFile string
}

// Stdout reports whether no endpoint is configured: records go to stdout.
func (e Endpoint) Stdout() bool { return e.Target == "" }

// PlaintextRemote reports whether records leave the host unencrypted:
// plaintext to a collector that is not on a loopback address.
func (e Endpoint) PlaintextRemote() bool {
	return !e.Stdout() && e.Insecure && tlsconf.CheckLoopback(e.Target) != nil
}

// TLSMode is "plaintext", "tls" or "none" (stdout), for logs.
func (e Endpoint) TLSMode() string {
	switch {
	case e.Stdout():
		return "none"
	case e.Insecure:
		return "plaintext"
	}
	return "tls"
}

// Resolve decides the endpoint from c (the flags) and the environment, read
// through getenv (os.Getenv; nil reads nothing). The endpoint is
// c.Endpoint, else OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, else
// OTEL_EXPORTER_OTLP_ENDPOINT, else none (stdout). Each takes the same two
// forms: a URL (http://HOST[:PORT] or https://HOST[:PORT], the port 4317 by
// default), whose scheme decides TLS, or HOST:PORT, where --otlp-insecure
// or OTEL_EXPORTER_OTLP_[LOGS_]INSECURE decide (TLS when neither says
// true). An invalid value, a scheme that contradicts an insecure setting,
// or an OTEL_EXPORTER_OTLP_[LOGS_]PROTOCOL other than grpc is an error
// naming the flag or variable.
func (c *Config) Resolve(getenv func(string) string) (Endpoint, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if name, v := first(getenv, EnvLogsProtocol, EnvProtocol); v != "" && v != Protocol {
		return Endpoint{}, fmt.Errorf("%s=%q: only %s is supported (OTLP/gRPC)", name, v, Protocol)
	}
	ep := Endpoint{From: FlagEndpoint}
	raw := c.Endpoint
	if raw == "" {
		ep.From, raw = first(getenv, EnvLogsEndpoint, EnvEndpoint)
	}
	if raw == "" {
		return Endpoint{}, nil
	}
	target, scheme, err := parseEndpoint(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%s %q: %w", ep.From, raw, err)
	}
	ep.Target = target
	insName, insecure, insSet, err := c.insecureSetting(getenv)
	if err != nil {
		return Endpoint{}, err
	}
	switch {
	case scheme == "https" && insSet && insecure:
		return Endpoint{}, fmt.Errorf("%s %q: the https scheme means TLS, but %s says plaintext", ep.From, raw, insName)
	case scheme == "http" && insSet && !insecure:
		return Endpoint{}, fmt.Errorf("%s %q: the http scheme means plaintext, but %s=%s says TLS", ep.From, raw, insName, getenv(insName)) // only the environment says TLS
	case scheme == "http":
		ep.Insecure = true
	case scheme == "":
		ep.Insecure = insecure
	}
	if !ep.Insecure {
		if err := ep.tlsFiles(getenv); err != nil {
			return Endpoint{}, err
		}
	}
	return ep, nil
}

// insecureSetting is the insecure setting: the flag when given, else the
// environment. name says where it comes from; set is false when neither
// says.
func (c *Config) insecureSetting(getenv func(string) string) (name string, insecure, set bool, err error) {
	name, raw := first(getenv, EnvLogsInsecure, EnvInsecure)
	switch {
	case c.Insecure:
		return FlagInsecure, true, true, nil
	case raw == "":
		return name, false, false, nil
	}
	switch strings.ToLower(raw) {
	case "true":
		return name, true, true, nil
	case "false":
		return name, false, true, nil
	}
	return name, false, false, fmt.Errorf("%s=%q: want true or false", name, raw)
}

// tlsFiles reads the CA and the client certificate and key of a TLS
// endpoint from the environment.
func (ep *Endpoint) tlsFiles(getenv func(string) string) error {
	_, ep.CAFile = first(getenv, EnvLogsCertificate, EnvCertificate)
	cn, cert := first(getenv, EnvLogsClientCertificate, EnvClientCertificate)
	kn, key := first(getenv, EnvLogsClientKey, EnvClientKey)
	if (cert == "") != (key == "") {
		return fmt.Errorf("%s and %s: give both or neither", cn, kn)
	}
	ep.CertFile, ep.KeyFile = cert, key
	return nil
}

// first returns the first of the variables names that is set, and its value.
func first(getenv func(string) string, names ...string) (string, string) {
	for _, n := range names {
		if v := strings.TrimSpace(getenv(n)); v != "" {
			return n, v
		}
	}
	return names[len(names)-1], ""
}

// parseEndpoint parses HOST:PORT or an http(s) URL, and returns HOST:PORT
// and the scheme ("" for HOST:PORT).
func parseEndpoint(raw string) (target, scheme string, err error) {
	if !strings.Contains(raw, "://") {
		host, port, err := net.SplitHostPort(raw)
		if err != nil || strings.ContainsAny(raw, "/?#@") {
			return "", "", errors.New("want HOST:PORT or a URL http://HOST[:PORT] or https://HOST[:PORT]")
		}
		if err := checkHostPort(host, port); err != nil {
			return "", "", err
		}
		return net.JoinHostPort(host, port), "", nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", errors.New("not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "", fmt.Errorf("scheme %q: want http (plaintext) or https (TLS)", u.Scheme)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", "", errors.New("want only a scheme, a host and a port (OTLP/gRPC has no path)")
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return "", "", errors.New("empty port")
		}
		port = defaultPort
	}
	if err := checkHostPort(host, port); err != nil {
		return "", "", err
	}
	return net.JoinHostPort(host, port), u.Scheme, nil
}

func checkHostPort(host, port string) error {
	if host == "" {
		return errors.New("no host")
	}
	if strings.ContainsAny(host, " \t%") {
		return fmt.Errorf("host %q: not a host name or address", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1 to 65535", port)
	}
	return nil
}
