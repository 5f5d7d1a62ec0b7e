// Command devcerts issues a development CA, an aggregator server certificate
// and one agent certificate per cluster for tokenwatch's mutual TLS:
//
//	go run ./cmd/devcerts -out certs -clusters a,b [-trust-domain tokenwatch] [-hosts localhost,127.0.0.1,::1]
//
// It writes ca.crt, server.crt, server.key, agent-<cluster>.crt and
// agent-<cluster>.key (keys mode 0600). Agent certificates carry the URI SAN
// spiffe://<trust-domain>/cluster/<cluster> that binds the cluster name.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tokenwatch/tokenwatch/internal/devca"
	"github.com/tokenwatch/tokenwatch/internal/tlsconf"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devcerts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory to write the certificates and keys into (required)")
	clusters := fs.String("clusters", "", "comma-separated cluster names, one agent certificate each")
	trustDomain := fs.String("trust-domain", tlsconf.DefaultTrustDomain, "SPIFFE trust domain of the agent certificates")
	hosts := fs.String("hosts", "localhost,127.0.0.1,::1", "comma-separated DNS names and IP addresses for the server certificate")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	set, err := parse(*out, *clusters, *trustDomain, *hosts, fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "devcerts: %v\n", err)
		return 2
	}
	_, files, err := devca.WriteSet(*out, set)
	if err != nil {
		fmt.Fprintf(stderr, "devcerts: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "CA:     %s\nserver: %s %s (%s)\n", files.CA, files.ServerCert, files.ServerKey, strings.Join(set.Hosts, ", "))
	for _, c := range set.Clusters {
		fmt.Fprintf(stdout, "agent:  %s %s (%s)\n", files.AgentCert[c], files.AgentKey[c], tlsconf.ClusterID(set.TrustDomain, c))
	}
	return 0
}

func parse(out, clusters, trustDomain, hosts string, rest []string) (devca.Set, error) {
	if len(rest) > 0 {
		return devca.Set{}, fmt.Errorf("unexpected arguments %q", rest)
	}
	if out == "" {
		return devca.Set{}, errors.New("-out is required")
	}
	if err := tlsconf.ValidateTrustDomain(trustDomain); err != nil {
		return devca.Set{}, fmt.Errorf("-trust-domain: %w", err)
	}
	set := devca.Set{TrustDomain: trustDomain, Clusters: split(clusters), Hosts: split(hosts)}
	seen := map[string]bool{}
	for _, c := range set.Clusters {
		if err := tlsconf.ValidateClusterName(c); err != nil {
			return devca.Set{}, fmt.Errorf("-clusters: %w", err)
		}
		if seen[c] {
			return devca.Set{}, fmt.Errorf("-clusters: %q given twice", c)
		}
		seen[c] = true
	}
	if len(set.Hosts) == 0 {
		return devca.Set{}, errors.New("-hosts: at least one host is required")
	}
	return set, nil
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
