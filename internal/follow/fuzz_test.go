package follow

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// FuzzLines reads arbitrary data with small limits and checks that the
// delivered lines and the reported losses tile the data exactly.
func FuzzLines(f *testing.F) {
	f.Add([]byte("a\nbb\nccc\n"), uint8(4), uint8(2))
	f.Add([]byte("0123456789\nx\n0123456789"), uint8(3), uint8(1))
	f.Add([]byte("\n\n\nlong-long-long\nend"), uint8(5), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, maxLine, block uint8) {
		ml, bs := int(maxLine%32)+1, int(block%16)+1
		dir := t.TempDir()
		path := filepath.Join(dir, "audit.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fl, err := New(Config{Path: path, Once: true, StartAt: StartBeginning, MaxLine: ml, BlockSize: bs})
		if err != nil {
			t.Fatal(err)
		}
		rec := newRecorder()
		if err := fl.Run(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
		got, losses := rec.snapshot()
		type piece struct {
			off, n int64
			text   []byte
		}
		var pieces []piece
		for _, l := range got {
			if len(l.text)-1 > ml {
				t.Errorf("line of %d bytes delivered with MaxLine %d", len(l.text)-1, ml)
			}
			pieces = append(pieces, piece{l.pos.Offset, int64(len(l.text)), []byte(l.text)})
		}
		for _, l := range losses {
			if !l.BytesKnown {
				t.Fatalf("loss without size: %+v", l)
			}
			if l.Reason == ReasonLineTooLong && l.Bytes <= int64(ml) {
				t.Errorf("skipped a line of %d bytes with MaxLine %d", l.Bytes, ml)
			}
			pieces = append(pieces, piece{off: l.Offset, n: l.Bytes})
		}
		sort.Slice(pieces, func(i, j int) bool { return pieces[i].off < pieces[j].off })
		var at int64
		for _, p := range pieces {
			if p.off != at {
				t.Fatalf("piece at %d, want %d (pieces %+v)", p.off, at, pieces)
			}
			if p.text != nil && !bytes.Equal(p.text, data[p.off:p.off+p.n]) {
				t.Fatalf("line at %d = %q, want %q", p.off, p.text, data[p.off:p.off+p.n])
			}
			at += p.n
		}
		if at != int64(len(data)) {
			t.Fatalf("pieces cover %d bytes of %d", at, len(data))
		}
	})
}

// FuzzSiblingName checks that naming never panics and that a lumberjack
// backup name is always recognised with its time.
func FuzzSiblingName(f *testing.F) {
	f.Add("audit-2026-11-27T00-00-01.000.log.gz")
	f.Add("audit.log.1")
	f.Add("audit-policy.yaml")
	l := newLayout("/var/log/audit.log")
	f.Fuzz(func(t *testing.T, name string) {
		l.parse(name)
	})
}
