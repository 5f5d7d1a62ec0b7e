package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// NetNS is a network namespace joined to the host by a veth pair: a test
// host with its own address whose link the test can cut and restore.
type NetNS struct {
	Name   string
	HostIf string
	HostIP string // the host side's address, reachable from inside
	NSIP   string // the namespace's address
}

var nsSeq atomic.Int32

// NetNSAvailable reports why network namespaces cannot be made here ("" when
// they can): they need root and iproute2.
func NetNSAvailable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "network namespaces need iproute2's ip command"
	}
	return ""
}

// NewNetNS creates a namespace with a veth link to the host on
// 10.231.<n>.0/30; it is deleted at the end of the test.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	n := int(nsSeq.Add(1)) + os.Getpid()%200
	id := fmt.Sprintf("%d%d", os.Getpid()%10000, n)
	ns := &NetNS{
		Name:   "twe2e" + id,
		HostIf: "twh" + id,
		HostIP: fmt.Sprintf("10.231.%d.1", n%250),
		NSIP:   fmt.Sprintf("10.231.%d.2", n%250),
	}
	nsIf := "twn" + id
	t.Cleanup(func() {
		_ = run("ip", "netns", "del", ns.Name)
		_ = run("ip", "link", "del", ns.HostIf)
	})
	steps := [][]string{
		{"ip", "netns", "add", ns.Name},
		{"ip", "link", "add", ns.HostIf, "type", "veth", "peer", "name", nsIf},
		{"ip", "link", "set", nsIf, "netns", ns.Name},
		{"ip", "addr", "add", ns.HostIP + "/30", "dev", ns.HostIf},
		{"ip", "link", "set", ns.HostIf, "up"},
		{"ip", "netns", "exec", ns.Name, "ip", "addr", "add", ns.NSIP + "/30", "dev", nsIf},
		{"ip", "netns", "exec", ns.Name, "ip", "link", "set", nsIf, "up"},
		{"ip", "netns", "exec", ns.Name, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			t.Fatalf("network namespace: %v", err)
		}
	}
	return ns
}

// Cut takes the host side of the link down: packets stop both ways.
func (ns *NetNS) Cut() error { return run("ip", "link", "set", ns.HostIf, "down") }

// Restore brings the link back.
func (ns *NetNS) Restore() error { return run("ip", "link", "set", ns.HostIf, "up") }

// Command returns the argv that runs bin inside the namespace.
func (ns *NetNS) Command(bin string, args ...string) (string, []string) {
	return "ip", append([]string{"netns", "exec", ns.Name, bin}, args...)
}

func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
