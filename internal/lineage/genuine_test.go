package lineage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/tokenwatch/tokenwatch/internal/audit"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// genuine is detect's archive of a real kube-apiserver v1.35.4 audit log
// (see ../detect/testdata/README.md).
const genuine = "../detect/testdata/kube-apiserver-v1.35.4-audit-logs.tgz"

// genuineEvents returns the archive's events in write order.
func genuineEvents(t *testing.T) []*audit.Event {
	t.Helper()
	f, err := os.Open(genuine)
	if err != nil {
		t.Skipf("genuine logs: %v", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[filepath.Base(h.Name)], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { // audit.log sorts after audit-<time>.log
		return strings.Replace(names[i], "audit.log", "audit~", 1) < strings.Replace(names[j], "audit.log", "audit~", 1)
	})
	var evs []*audit.Event
	for _, n := range names {
		sc := bufio.NewScanner(bytes.NewReader(files[n]))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			if e, err := audit.Decode(sc.Bytes()); err == nil {
				evs = append(evs, e)
			}
		}
	}
	return evs
}

// TestGenuineJoin: every request the real log made with a minted token
// joins its mint (FIELD-NOTES: 133 tokens minted, 28 later events made
// with them: 14 requests, two stages each, all token creates, as the
// log's policy records only those, so each is a chain). Every token create with a JTI is taken as
// alerting here.
func TestGenuineJoin(t *testing.T) {
	evs := genuineEvents(t)
	s := New(DefaultConfig(), Hooks{})
	minted := map[string]bool{}
	var mints, joined, withMinted, chains int
	for _, e := range evs {
		if !audit.Final(e.Stage) {
			continue
		}
		now := detect.Time(e)
		if jti := CredentialJTI(e.User); minted[jti] {
			withMinted++
			if s.watched(jti, now, now) != nil {
				joined++
			}
			if _, ok := s.Chain(now, e); ok && e.IsTokenCreate() {
				chains++
			}
			s.Use(now, src1, e, nil, false)
		}
		if m, ok := s.MintOf(src1, e); ok && e.IsTokenCreate() && !minted[m.JTI] {
			minted[m.JTI] = true
			mints++
			s.Mint(now, m)
		}
	}
	t.Logf("%d events, %d tokens minted, %d requests made with them, %d joined, %d chain mints", len(evs), mints, withMinted, joined, chains)
	if mints != 133 || withMinted != 14 || joined != withMinted || chains != withMinted {
		t.Errorf("minted %d, used %d, joined %d, chains %d; want 133, 14, 14, 14", mints, withMinted, joined, chains)
	}
}
