package wire

import (
	"errors"
	"fmt"
)

// MaxNodeNameLen bounds Hello.node: a DNS subdomain's length, as Kubernetes
// node names.
const MaxNodeNameLen = 253

// ValidateNodeName checks a node name as the aggregator admits it in
// Hello.node: 1 to MaxNodeNameLen characters of A-Z a-z 0-9 '.' '_' '-'
// (Kubernetes node names and hostnames; the cluster name's alphabet).
func ValidateNodeName(name string) error {
	if name == "" {
		return errors.New("empty node name")
	}
	if len(name) > MaxNodeNameLen {
		return fmt.Errorf("node name of %d bytes: at most %d allowed", len(name), MaxNodeNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("character %q not allowed (want 1 to %d of A-Z a-z 0-9 . _ -)", c, MaxNodeNameLen)
		}
	}
	return nil
}
