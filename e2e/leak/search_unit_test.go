package leak

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

// TestSecretsFind checks the search itself: a leak in any of the forms a
// program might write it is found, and outputs without a token are clean.
func TestSecretsFind(t *testing.T) {
	tok := mintedToken(t, "team-a", "builder")
	other := mintedToken(t, "team-a", "deployer")
	if !strings.HasPrefix(tok, jwtHeaderPrefix) {
		t.Fatalf("token %.40s... does not start with the RS256 header prefix", tok)
	}
	s := NewSecrets([]string{"tok", "other"}, []string{tok, other})
	parts := strings.Split(tok, ".")
	jsonBytes, _ := json.Marshal(struct{ Line []byte }{[]byte(`{"status":{"token":"` + tok + `"}}`)})
	var slogText bytes.Buffer
	slog.New(slog.NewTextHandler(&slogText, nil)).Info("decode failed", "line", `{"token":"`+tok+`"}`)
	for _, tc := range []struct {
		name string
		out  string
		want []string
	}{
		{"verbatim", "x" + tok + "y", []string{"tok"}},
		{"slog text with quoting", slogText.String(), []string{"tok"}},
		{"escaped dots", strings.ReplaceAll(tok, ".", `\u002e`), []string{"tok"}},
		{"signature only", "sig=" + parts[2], []string{"tok"}},
		{"payload only", parts[1], []string{"tok"}},
		{"truncated to 40 characters after the header", tok[len(jwtHeaderPrefix):len(jwtHeaderPrefix)+40] + "...", []string{"tok"}},
		{"[]byte in JSON (base64)", string(jsonBytes), []string{"tok"}},
		{"base64 at offset 1", base64.StdEncoding.EncodeToString([]byte("a" + tok)), []string{"tok"}},
		{"base64 at offset 2", base64.URLEncoding.EncodeToString([]byte("ab" + tok + "c")), []string{"tok"}},
		{"hex dump", hex.EncodeToString([]byte("line: " + tok)), []string{"tok"}},
		{"upper hex", strings.ToUpper(hex.EncodeToString([]byte(parts[2]))), []string{"tok"}},
		{"both", other + " " + parts[2], []string{"other", "tok"}},
		{"header prefix only", jwtHeaderPrefix + "n0", nil},
		{"15 characters of the signature", parts[2][:15], nil},
		{"nothing", `{"user.name":"leak-tester","user_agent.original":"` + control + `"}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.Find([]byte(tc.out)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Find = %v, want %v", got, tc.want)
			}
		})
	}
}

func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	h := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[5:], stream)
	return append(h, payload...)
}

func grpcMsg(m []byte) []byte {
	h := make([]byte, 5)
	binary.BigEndian.PutUint32(h[1:], uint32(len(m)))
	return append(h, m...)
}

// TestGRPCMessages checks that messages split across DATA frames, padded
// and interleaved between streams are reassembled whole, so that a string
// cut by a frame boundary is still found.
func TestGRPCMessages(t *testing.T) {
	m1 := []byte("first message: " + strings.Repeat("a", 40) + control)
	m2 := []byte("second message on another stream")
	m3 := []byte("third")
	s1 := append(grpcMsg(m1), grpcMsg(m3)...)
	cut := len(s1) - len(control)/2 - len(m3) - 5 // inside the control string
	padded := append([]byte{3}, s1[cut:]...)
	padded = append(padded, 0, 0, 0)
	var b []byte
	b = append(b, h2Preface...)
	b = append(b, h2Frame(4, 0, 0, make([]byte, 6))...) // SETTINGS
	b = append(b, h2Frame(1, 4, 1, []byte("hpack"))...) // HEADERS
	b = append(b, h2Frame(0, 0, 1, s1[:cut])...)
	b = append(b, h2Frame(0, 0, 3, grpcMsg(m2))...)
	b = append(b, h2Frame(0, 0x8, 1, padded)...)
	if bytes.Contains(b, []byte(control)) {
		t.Fatal("test setup: the control string should be split by the frame boundary")
	}
	got, err := GRPCMessages(b)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{m1, m3, m2}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GRPCMessages = %q, want %q", got, want)
	}
	if _, err := GRPCMessages(b[:len(b)-3]); err != nil {
		t.Errorf("a capture cut mid-frame: %v", err)
	}
	if _, err := GRPCMessages([]byte(fmt.Sprint("short"))); err == nil {
		t.Error("5 bytes parsed as HTTP/2 frames without an error")
	}
}
