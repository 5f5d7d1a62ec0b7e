package main

import (
	"errors"
	"math"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

func TestDecideMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	limit := func(n uint64) func() (uint64, error) { return func() (uint64, error) { return n, nil } }
	failing := func(err error) func() (uint64, error) { return func() (uint64, error) { return 0, err } }
	tests := []struct {
		name    string
		env     map[string]string
		cgroup  func() (uint64, error)
		want    memoryLimit
		wantErr bool
	}{
		{"cgroup limit, default ratio", nil, limit(512 * mib),
			memoryLimit{source: "cgroup", cgroup: 512 * mib, ratio: 0.85, limit: 456340275}, false},
		{"AUTOMEMLIMIT sets the ratio", map[string]string{"AUTOMEMLIMIT": "0.5"}, limit(512 * mib),
			memoryLimit{source: "cgroup", cgroup: 512 * mib, ratio: 0.5, limit: 256 * mib}, false},
		{"AUTOMEMLIMIT=1 is the whole limit", map[string]string{"AUTOMEMLIMIT": "1"}, limit(512 * mib),
			memoryLimit{source: "cgroup", cgroup: 512 * mib, ratio: 1, limit: 512 * mib}, false},
		{"GOMEMLIMIT wins", map[string]string{"GOMEMLIMIT": "300MiB", "AUTOMEMLIMIT": "0.5"}, limit(512 * mib),
			memoryLimit{source: "GOMEMLIMIT"}, false},
		{"AUTOMEMLIMIT=off", map[string]string{"AUTOMEMLIMIT": "off"}, limit(512 * mib),
			memoryLimit{source: "off"}, false},
		{"no cgroup limit", nil, failing(memlimit.ErrNoLimit),
			memoryLimit{source: "none", ratio: 0.85}, false},
		{"cgroup unreadable", nil, failing(errors.New("no mountinfo")),
			memoryLimit{source: "none: no mountinfo", ratio: 0.85}, false},
		{"huge cgroup limit saturates", nil, limit(math.MaxUint64),
			memoryLimit{source: "cgroup", cgroup: math.MaxUint64, ratio: 0.85, limit: math.MaxInt64}, false},
		{"ratio not a number", map[string]string{"AUTOMEMLIMIT": "most"}, limit(512 * mib), memoryLimit{}, true},
		{"ratio zero", map[string]string{"AUTOMEMLIMIT": "0"}, limit(512 * mib), memoryLimit{}, true},
		{"ratio above one", map[string]string{"AUTOMEMLIMIT": "1.5"}, limit(512 * mib), memoryLimit{}, true},
		{"ratio NaN", map[string]string{"AUTOMEMLIMIT": "NaN"}, limit(512 * mib), memoryLimit{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decideMemoryLimit(func(k string) string { return tt.env[k] }, tt.cgroup)
			if (err != nil) != tt.wantErr {
				t.Fatalf("decideMemoryLimit() error = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("decideMemoryLimit() = %+v, want %+v", got, tt.want)
			}
		})
	}
}
