package leak

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// jwtHeaderPrefix is what every RS256 service-account token starts with
// (base64url of `{"alg":"RS256","kid":"`): common to all tokens, so it is
// not distinctive and never searched alone.
const jwtHeaderPrefix = "eyJhbGciOiJSUzI1NiIsImtpZCI6I"

// window is the length of the token substrings searched for: 16 base64url
// characters are 96 random bits, so a hit is a copy, never a coincidence,
// and a copy cut anywhere (a truncated log attribute, a string split across
// two HTTP/2 frames) still contains whole windows.
const window = 16

// Secrets searches byte strings for copies of secret tokens: verbatim, in
// parts, and encoded the ways a careless program might write bytes (standard
// and URL base64 at every alignment, as encoding/json does with []byte;
// lower and upper hex, as a hex dump does).
type Secrets struct {
	names  []string
	byText map[string]int // window-sized needle -> secret index
	byHex  map[string]int // 2*window hex needle -> secret index
}

// NewSecrets indexes secrets, each named for reports.
func NewSecrets(names, secrets []string) *Secrets {
	s := &Secrets{names: names, byText: map[string]int{}, byHex: map[string]int{}}
	// add indexes a needle; one that two secrets share (the claims every
	// token starts with) is not distinctive and is dropped.
	add := func(m map[string]int, needle string, i int) {
		if j, ok := m[needle]; ok && j != i {
			m[needle] = -1
			return
		}
		m[needle] = i
	}
	for i, sec := range secrets {
		// Plain windows over everything after the common header prefix.
		from := 0
		if strings.HasPrefix(sec, jwtHeaderPrefix) {
			from = len(jwtHeaderPrefix)
		}
		for j := from; j+window <= len(sec); j++ {
			add(s.byText, sec[j:j+window], i)
		}
		distinct := sec[from:]
		// base64 of any byte string that contains the secret contains the
		// encoding of the secret at one of three alignments; its first and
		// last characters mix in neighbouring bytes, so they are dropped.
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			for k := 0; k < 3; k++ {
				b := enc.EncodeToString(append([]byte(strings.Repeat("\x00", k)), distinct...))
				b = strings.TrimRight(b, "=")
				if len(b) < 8+window {
					continue
				}
				b = b[4 : len(b)-4]
				for j := 0; j+window <= len(b); j++ {
					add(s.byText, b[j:j+window], i)
				}
			}
		}
		h := hex.EncodeToString([]byte(distinct))
		for _, hx := range []string{h, strings.ToUpper(h)} {
			for j := 0; j+2*window <= len(hx); j += 2 {
				add(s.byHex, hx[j:j+2*window], i)
			}
		}
	}
	return s
}

// Find returns the names of the secrets that b contains a copy of, sorted.
func (s *Secrets) Find(b []byte) []string {
	hit := map[int]bool{}
	for j := 0; j+window <= len(b); j++ {
		if i, ok := s.byText[string(b[j:j+window])]; ok && i >= 0 {
			hit[i] = true
		}
	}
	for j := 0; j+2*window <= len(b); j++ {
		if i, ok := s.byHex[string(b[j:j+2*window])]; ok && i >= 0 {
			hit[i] = true
		}
	}
	var out []string
	for i := range hit {
		out = append(out, s.names[i])
	}
	sort.Strings(out)
	return out
}

// Leaks collects where secrets were found, for one report at the end.
type Leaks struct {
	s *Secrets
	// planted names the secret that is forwarded on purpose: where it is
	// found is recorded in seen, not reported as a leak.
	planted string
	seen    map[string]bool
	found   []string
	checked int
	bytes   int64
}

// Check searches b, described by where, and reports whether the planted
// secret is in it.
func (l *Leaks) Check(where string, b []byte) (planted bool) {
	l.checked++
	l.bytes += int64(len(b))
	names := l.s.Find(b)
	if i := slices.Index(names, l.planted); i >= 0 {
		names = slices.Delete(names, i, i+1)
		planted = true
		if l.seen == nil {
			l.seen = map[string]bool{}
		}
		l.seen[where] = true
	}
	if len(names) > 0 {
		shown := names
		if len(shown) > 5 {
			shown = append(shown[:5:5], fmt.Sprintf("... %d more", len(names)-5))
		}
		l.found = append(l.found, fmt.Sprintf("%s: %d secret(s): %s", where, len(names), strings.Join(shown, ", ")))
	}
	return planted
}
