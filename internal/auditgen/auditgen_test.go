package auditgen

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
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

// TestDefaultOutputUnchanged pins the generator's default output: fields
// added later must leave it byte for byte as it was.
func TestDefaultOutputUnchanged(t *testing.T) {
	var buf bytes.Buffer
	cfg := DefaultConfig()
	cfg.Lines = 3000
	if _, _, err := Generate(&buf, cfg); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	const want = "9d8c349735053900107a35954432d87e1f3a52b5d2e41ec4d5928a289da36ce9"
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Errorf("default output sha256 = %s, want %s", got, want)
	}
}

func TestWorkloads(t *testing.T) {
	var buf bytes.Buffer
	cfg := DefaultConfig()
	cfg.Attacks = false
	cfg.Lines = 2000
	cfg.WorkloadRate = 0.6
	cfg.Workloads = []Workload{
		{User: "system:serviceaccount:team-a:app", JTI: "0b1c2d3e-aaaa-4bbb-8ccc-000000000001"},
		{User: "system:serviceaccount:team-b:web", JTI: "0b1c2d3e-aaaa-4bbb-8ccc-000000000002"},
	}
	_, st, err := Generate(&buf, cfg)
	if err != nil {
		t.Fatal(err)
	}
	jti := 0
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		e, err := audit.Decode(sc.Bytes())
		if err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.User != nil && len(e.User.Extra["authentication.kubernetes.io/credential-id"]) == 1 &&
			strings.HasPrefix(e.User.Extra["authentication.kubernetes.io/credential-id"][0], "JTI=") {
			jti++
		}
	}
	if frac := float64(jti) / float64(st.Lines); frac < 0.5 || frac > 0.7 {
		t.Errorf("%d of %d lines carry a JTI credential (%.2f), want about 0.6", jti, st.Lines, frac)
	}
	if avg := st.Bytes / int64(st.Lines); avg < 900 || avg > 1300 {
		t.Errorf("average line = %d bytes, want about %d", avg, cfg.Pad)
	}
}
