package procmem

import (
	"os"
	"runtime"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		give    string
		want    Mem
		wantErr bool
	}{
		{"linux", "Name:\tagent\nVmPeak:\t  900 kB\nVmHWM:\t   30720 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n", Mem{RSS: 20 << 20, HWM: 30 << 20}, false},
		{"missing HWM", "VmRSS:\t 1 kB\n", Mem{}, true},
		{"bad unit", "VmRSS:\t 1 MB\nVmHWM:\t 1 kB\n", Mem{}, true},
		{"empty", "", Mem{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.give))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("Parse = %+v, %v, want %+v (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestReadSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc")
	}
	m, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.HWM < m.RSS {
		t.Errorf("Read(self) = %+v, want 0 < RSS <= HWM", m)
	}
}
