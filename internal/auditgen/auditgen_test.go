package auditgen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/audit"
)

func TestGenerateIsValidAuditLog(t *testing.T) {
	var buf bytes.Buffer
	cfg := DefaultConfig()
	cfg.Lines = 2000
	cfg.ResponseTokens = true
	want, st, err := Generate(&buf, cfg)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if st.Lines < cfg.Lines {
		t.Errorf("Lines = %d, want >= %d", st.Lines, cfg.Lines)
	}
	if len(want) != 11 {
		t.Errorf("expected alerts = %d, want 11", len(want))
	}
	if len(st.ResponseToken) == 0 {
		t.Errorf("no response tokens written with ResponseTokens set")
	}
	creates := 0
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e audit.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.IsTokenCreate() {
			creates++
		}
	}
	if creates != st.TokenCreates {
		t.Errorf("token creates decoded = %d, generator counted %d", creates, st.TokenCreates)
	}
}

func TestGenerateIsReproducible(t *testing.T) {
	var a, b bytes.Buffer
	if _, _, err := Generate(&a, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Generate(&b, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("two runs with the same seed differ")
	}
}

func TestPadApproximatesLineSize(t *testing.T) {
	var buf bytes.Buffer
	cfg := DefaultConfig()
	cfg.Attacks = false
	cfg.Lines = 1000
	_, st, err := Generate(&buf, cfg)
	if err != nil {
		t.Fatal(err)
	}
	avg := st.Bytes / int64(st.Lines)
	if avg < 900 || avg > 1300 {
		t.Errorf("average line = %d bytes, want about %d", avg, cfg.Pad)
	}
}
