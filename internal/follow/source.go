package follow

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
)

// source is one open file being read.
type source struct {
	path     string
	id       Identity
	f        *os.File
	zr       *gzip.Reader // set for a compressed file
	r        io.Reader
	off      int64 // offset of the follower's buf[0]: the next byte to deliver
	readOff  int64 // offset of the next byte to read
	size     int64 // plain: size at the last stat
	live     bool  // opened by the live name and not seen rotated away
	rotated  bool  // was live, then renamed or deleted
	key      orderKey
	hasKey   bool
	since    int64 // unix nanos when rotation away was noticed
	lastRead bool  // read once more after the writer moved on
}

func (s *source) close() {
	if s == nil {
		return
	}
	if s.zr != nil {
		s.zr.Close()
	}
	s.f.Close()
}

// openPlain opens an uncompressed file and positions it at off (which may
// be past its end: the caller then sees a truncation).
func openPlain(path string, off int64) (*source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err // an *fs.PathError: "stat <path>: ..."
	}
	s := &source{path: path, f: f, r: f, size: fi.Size()}
	s.id.Dev, s.id.Ino = devIno(fi)
	if err := s.refreshFP(min(int64(FPMax), fi.Size())); err != nil {
		f.Close()
		return nil, err
	}
	if off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("seek %s to %d: %w", path, off, err)
		}
	}
	s.off, s.readOff = off, off
	return s, nil
}

// refreshFP fingerprints the first n bytes of a plain source.
func (s *source) refreshFP(n int64) error {
	if n <= 0 {
		s.id.FP, s.id.FPLen = nil, 0
		return nil
	}
	sum, ok, err := fingerprintHandle(s.f, int(n))
	if err != nil {
		return fmt.Errorf("fingerprint %s: %w", s.path, err)
	}
	if !ok {
		return fmt.Errorf("fingerprint %s: shorter than %d bytes", s.path, n)
	}
	s.id.FP, s.id.FPLen = sum, int(n)
	return nil
}

// errCorrupt marks data that cannot be decoded (a damaged gzip stream).
var errCorrupt = errors.New("corrupt data")

// openGzip opens a compressed file and skips to off in its decompressed data.
func openGzip(path string, off int64) (*source, error) {
	head, err := gzipHead(path)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w: %w", path, errCorrupt, err)
	}
	s := &source{path: path, f: f, zr: zr, r: zr}
	sum := sha256.Sum256(head)
	if len(head) > 0 {
		s.id.FP, s.id.FPLen = sum[:], len(head)
	}
	if off > 0 {
		got, err := io.CopyN(io.Discard, zr, off)
		if err != nil && err != io.EOF {
			s.close()
			return nil, fmt.Errorf("skip to %d in %s: %w: %w", off, path, errCorrupt, err)
		}
		off = got
	}
	s.off, s.readOff = off, off
	return s, nil
}

// gzipHead returns up to FPMax leading bytes of a compressed file's data.
func gzipHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", path, errCorrupt, err)
	}
	defer zr.Close()
	var b bytes.Buffer
	if _, err := io.CopyN(&b, zr, FPMax); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read %s: %w: %w", path, errCorrupt, err)
	}
	return b.Bytes(), nil
}

// openSibling opens a rotated file at off.
func openSibling(s sibling, off int64) (*source, error) {
	var src *source
	var err error
	if s.gz {
		src, err = openGzip(s.path, off)
	} else {
		src, err = openPlain(s.path, off)
	}
	if err != nil {
		return nil, err
	}
	src.key, src.hasKey = s.key, true
	return src, nil
}

// matchesID reports whether the open source holds the data named by id.
func (s *source) matchesID(id Identity) bool {
	if id.FPLen == 0 {
		return s.zr == nil && id.Plain() && s.id.Dev == id.Dev && s.id.Ino == id.Ino
	}
	if s.zr == nil && id.Plain() && (s.id.Dev != id.Dev || s.id.Ino != id.Ino) {
		return false
	}
	var sum []byte
	var ok bool
	var err error
	if s.zr != nil {
		sum, ok, err = fingerprintFile(s.path, true, id.FPLen)
	} else {
		sum, ok, err = fingerprintHandle(s.f, id.FPLen)
	}
	return err == nil && ok && bytes.Equal(sum, id.FP)
}

// lastLineEnd returns the offset just after the last newline before size,
// or 0 when there is none.
func lastLineEnd(f *os.File, size int64) (int64, error) {
	const chunk = 64 << 10
	buf := make([]byte, chunk)
	for end := size; end > 0; {
		start := max(0, end-chunk)
		n, err := f.ReadAt(buf[:end-start], start)
		if err != nil && err != io.EOF {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}
