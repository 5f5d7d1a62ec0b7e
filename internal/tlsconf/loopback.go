package tlsconf

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// CheckLoopback returns an error unless addr ("host:port") names a loopback
// address: 127.0.0.0/8, ::1 or "localhost". An empty host (":8080") listens
// on every interface and is refused.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("check loopback address %q: %w", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return fmt.Errorf("address %q is not a loopback address (want 127.0.0.0/8, ::1 or localhost)", addr)
	}
	if !ip.Unmap().IsLoopback() {
		return fmt.Errorf("address %q is not a loopback address (want 127.0.0.0/8, ::1 or localhost)", addr)
	}
	return nil
}
