package follow

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// mib is lumberjack's unit of MaxSize.
const mib = 1 << 20

// RotationProbe infers the size at which the writer of a log rotates it,
// from the newest rotation lumberjack (kube-apiserver's audit log writer)
// left in its directory. lumberjack rotates before a write that would take
// the file past its maximum, MaxSize MiB (at open, one that would reach
// it): the backup then holds S bytes, S <= max, and the next file starts
// with that write, a line of L bytes with S+L >= max. So the maximum is a
// whole number of MiB in [S, S+L]. It refuses a longer write outright: a
// line longer than the maximum never reaches the file.
//
// A RotationProbe is not safe for concurrent use.
type RotationProbe struct {
	l       layout
	maxLine int64
	key     probeKey
	size    int64
}

// probeKey identifies the pair of files a size was inferred from.
type probeKey struct {
	backup, next string
	size         int64 // the backup's size on disk
	dev, ino     uint64
}

// NewRotationProbe returns a probe of the log at path that reads at most
// maxLine bytes of a line.
func NewRotationProbe(path string, maxLine int64) *RotationProbe {
	return &RotationProbe{l: newLayout(path), maxLine: maxLine}
}

// errNoNewline: the next file's first line is not complete (yet);
// errLongLine: it is longer than the probe reads.
var (
	errNoNewline = errors.New("first line not complete")
	errLongLine  = errors.New("first line too long")
)

// Size returns the largest size, in bytes, at which the writer may have
// made the newest lumberjack backup: a multiple of 1 MiB. It is 0 when no
// lumberjack backup is seen, or when the backup and the file after it do
// not fit a lumberjack rotation (a log rotated by logrotate, a backup
// edited since). On an error, or while the next file's first line is not
// complete (or longer than maxLine), the last size inferred stands. A
// compressed backup's size is read from its gzip trailer (the size modulo
// 4 GiB).
func (p *RotationProbe) Size() (int64, error) {
	backup, next, ok, err := p.newestRotation()
	if err != nil {
		return p.size, err
	}
	if !ok {
		p.key, p.size = probeKey{}, 0
		return 0, nil
	}
	k := probeKey{backup: backup.path, next: next.path, size: backup.size, dev: next.dev, ino: next.ino}
	if k == p.key {
		return p.size, nil
	}
	s, err := dataSize(backup)
	if err != nil {
		return p.size, err
	}
	line, err := firstLine(next, p.maxLine)
	switch {
	case errors.Is(err, errNoNewline): // being written: looked at again
		return p.size, nil
	case errors.Is(err, errLongLine): // not looked at again
		p.key = k
		return p.size, nil
	case err != nil:
		return p.size, err
	}
	p.key, p.size = k, RotationBound(s, line)
	return p.size, nil
}

// RotationBound is the largest maximum file size, in bytes, that lumberjack
// may have rotated at when it left a backup of size bytes and began the
// next file with a line of line bytes (its newline included): the largest
// multiple of 1 MiB in [size, size+line]; 0 when there is none.
func RotationBound(size, line int64) int64 {
	if size <= 0 || line <= 0 {
		return 0
	}
	hi := (size + line) / mib * mib
	if hi < size {
		return 0
	}
	return hi
}

// newestRotation returns the newest lumberjack backup of the log (its
// plain file while both it and its .gz exist) and the file written after
// it: the next backup, or the live file.
func (p *RotationProbe) newestRotation() (backup, next sibling, ok bool, err error) {
	sibs, err := p.l.scan()
	if err != nil {
		return backup, next, false, fmt.Errorf("list %s: %w", p.l.dir, err)
	}
	i := len(sibs) - 1
	for i >= 0 && !sibs[i].named {
		i--
	}
	if i < 0 {
		return backup, next, false, nil
	}
	for i > 0 && sibs[i-1].named && sibs[i-1].key == sibs[i].key && !sibs[i-1].gz {
		i-- // the plain file, not the .gz being written from it
	}
	backup = sibs[i]
	for j := i + 1; j < len(sibs); j++ {
		if sibs[j].key != backup.key {
			return backup, sibs[j], sibs[j].named, nil
		}
	}
	fi, err := os.Stat(p.l.path())
	if err != nil {
		return backup, next, false, nil // no live file: nothing to infer from
	}
	dev, ino := devIno(fi)
	return backup, sibling{path: p.l.path(), dev: dev, ino: ino, size: fi.Size()}, fi.Mode().IsRegular(), nil
}

// path is the live file's path.
func (l layout) path() string { return filepath.Join(l.dir, l.base) }

// dataSize is the size of s's data: its size, or a gzip trailer's ISIZE.
func dataSize(s sibling) (int64, error) {
	if !s.gz {
		return s.size, nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var tail [4]byte
	if s.size < 18 { // a gzip member's header and trailer
		return 0, fmt.Errorf("read %s: %w: too short for gzip", s.path, errCorrupt)
	}
	if _, err := f.ReadAt(tail[:], s.size-4); err != nil {
		return 0, fmt.Errorf("read %s: %w", s.path, err)
	}
	return int64(binary.LittleEndian.Uint32(tail[:])), nil
}

// firstLine returns the length of s's first line, its newline included,
// reading at most max bytes.
func firstLine(s sibling, max int64) (int64, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var r io.Reader = f
	if s.gz {
		zr, err := gzip.NewReader(bufio.NewReader(f))
		if err != nil {
			return 0, fmt.Errorf("open %s: %w: %w", s.path, errCorrupt, err)
		}
		defer zr.Close()
		r = zr
	}
	buf := make([]byte, 64<<10)
	var n int64
	for n < max {
		k, err := r.Read(buf[:min(int64(len(buf)), max-n)])
		if i := bytes.IndexByte(buf[:k], '\n'); i >= 0 {
			return n + int64(i) + 1, nil
		}
		n += int64(k)
		if errors.Is(err, io.EOF) {
			return 0, errNoNewline
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", s.path, err)
		}
	}
	return 0, errLongLine
}
