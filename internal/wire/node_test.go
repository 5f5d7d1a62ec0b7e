package wire

import (
	"strings"
	"testing"
)

func TestValidateNodeName(t *testing.T) {
	tests := []struct {
		give string
		ok   bool
	}{
		{"cp-1", true},
		{"ip-10-0-0-7.ec2.internal", true},
		{"Node_A", true},
		{strings.Repeat("a", MaxNodeNameLen), true},
		{"", false},
		{strings.Repeat("a", MaxNodeNameLen+1), false},
		{"cp 1", false},
		{"cp/1", false},
		{"nœud", false},
	}
	for _, tt := range tests {
		if err := ValidateNodeName(tt.give); (err == nil) != tt.ok {
			t.Errorf("ValidateNodeName(%.40q) = %v, want ok %v", tt.give, err, tt.ok)
		}
	}
}
