package config

import (
	"strings"
	"testing"
)

func TestLimitsMaxBufferedBytes(t *testing.T) {
	tests := []struct {
		name, give string
		want       int    // parsed value when the file is valid
		wantErr    string // error substring otherwise
	}{
		{name: "default", give: "", want: 64 << 20},
		{name: "set", give: "limits:\n  max_buffered_bytes: 134217728\n", want: 128 << 20},
		{name: "below eight messages", give: "limits:\n  max_buffered_bytes: 33554431\n",
			wantErr: "limits.max_buffered_bytes: must be >= 8 x limits.max_message_bytes (33554432)"},
		{name: "follows max_message_bytes", give: "limits:\n  max_message_bytes: 16777216\n",
			wantErr: "limits.max_buffered_bytes: must be >= 8 x limits.max_message_bytes (134217728)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.give))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want it to contain %q", tt.give, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.give, err)
			}
			if got := cfg.Limits.MaxBufferedBytes; got != tt.want {
				t.Errorf("Parse(%q).Limits.MaxBufferedBytes = %d, want %d", tt.give, got, tt.want)
			}
		})
	}
}
