package follow

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"path/filepath"
	"testing"
)

// handleChecker is a Handler that checks each block against its File: the
// block's bytes are at its offset in the file (plain), or in the file's
// decompressed data (Compressed).
type handleChecker struct {
	t          *testing.T
	compressed bool
	blocks     int
}

func (h *handleChecker) Block(_ context.Context, b Block) error {
	h.blocks++
	if b.File == nil {
		h.t.Errorf("block at %d: no File", b.Pos.Offset)
		return nil
	}
	if b.Compressed != h.compressed {
		h.t.Errorf("block at %d: Compressed = %v, want %v", b.Pos.Offset, b.Compressed, h.compressed)
	}
	got := make([]byte, len(b.Data))
	if b.Compressed {
		zr, err := gzip.NewReader(io.NewSectionReader(b.File, 0, 1<<62))
		if err != nil {
			h.t.Fatal(err)
		}
		defer zr.Close()
		if _, err := io.CopyN(io.Discard, zr, b.Pos.Offset); err != nil {
			h.t.Fatal(err)
		}
		if _, err := io.ReadFull(zr, got); err != nil {
			h.t.Fatal(err)
		}
	} else if _, err := b.File.ReadAt(got, b.Pos.Offset); err != nil {
		h.t.Fatal(err)
	}
	if !bytes.Equal(got, b.Data) {
		h.t.Errorf("block at %d: File holds %q there, want %q", b.Pos.Offset, got, b.Data)
	}
	return nil
}

func (h *handleChecker) Loss(context.Context, Loss) error { return nil }

// TestBlockFile: a block names the open file its data was read from.
func TestBlockFile(t *testing.T) {
	for _, compressed := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "audit.log")
		appendFile(t, path, lines("a", 0, 300, 100)...)
		if compressed {
			gzipFile(t, path)
			path += ".gz"
		}
		f, err := New(Config{Path: path, Once: true, StartAt: StartBeginning, BlockSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		h := &handleChecker{t: t, compressed: compressed}
		if err := f.Run(context.Background(), h); err != nil {
			t.Fatal(err)
		}
		if h.blocks < 2 {
			t.Errorf("compressed=%v: %d blocks, want several", compressed, h.blocks)
		}
	}
}
