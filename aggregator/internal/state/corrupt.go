package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrCorrupt is matched (errors.Is) by Open's error when the file exists but
// is not a readable store: empty, truncated, or with damaged pages. Nothing
// of it was changed; MoveAside sets it aside so that a new store can start.
var ErrCorrupt = errors.New("state file corrupt")

// CorruptError says why a store file is corrupt.
type CorruptError struct {
	Path   string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("state file %s is corrupt (%s)", e.Path, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// corrupt returns a CorruptError whose reason is one line.
func corrupt(path string, format string, args ...any) error {
	reason := strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")
	if len(reason) > 300 {
		reason = reason[:300] + "..."
	}
	return &CorruptError{Path: path, Reason: reason}
}

// verify checks an existing store file before bbolt opens it. bbolt trusts
// its pages: at Open it rebuilds the free list (this store does not sync
// it) by walking every page in a goroutine of its own, where a damaged page
// panics, a page beyond the end of a truncated file faults (SIGBUS), and a
// problem it reports makes Open panic while that goroutine goes on with a
// closed transaction: nothing can recover from any of these. So verify
// reads the file itself (ReadAt, no mapping) and checks what that walk
// relies on: a valid meta page, a file that holds every page the meta
// counts, and a tree whose pages are in bounds, referenced once, of the
// right type, with their elements inside the page and keys in order.
//
// It holds a shared lock on the file meanwhile, so that it never reads a
// file another aggregator is writing: that one is refused as locked.
func verify(path string, timeout time.Duration) error {
	f, err := os.Open(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil // a new store
	case err != nil:
		return fmt.Errorf("open state %s: %w", path, err)
	}
	defer f.Close()
	if err := lockShared(f, timeout); err != nil {
		return openError(path, err, timeout)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("open state %s: %w", path, err)
	}
	if fi.Size() == 0 {
		return corrupt(path, "empty: 0 bytes, not even the meta pages")
	}
	c := &pageChecker{r: f, size: fi.Size(), seen: map[uint64]bool{}}
	if err := c.check(); err != nil {
		var re *readError
		if errors.As(err, &re) {
			return fmt.Errorf("open state %s: %w", path, re.err)
		}
		return corrupt(path, "%v", err)
	}
	return nil
}

// bbolt's file layout (go.etcd.io/bbolt/internal/common), in native byte
// order.
const (
	pageHeaderSize   = 16 // id u64, flags u16, count u16, overflow u32
	elementSize      = 16 // branch: pos, ksize u32, pgid u64; leaf: flags, pos, ksize, vsize u32
	bucketHeaderSize = 16 // root pgid u64, sequence u64
	metaChecksumAt   = 56 // magic, version, page size, flags u32; root bucket; freelist, pgid, txid u64
	pageBranch       = 0x01
	pageLeaf         = 0x02
	leafBucket       = 0x01
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	maxTreeDepth     = 64
)

var ne = binary.NativeEndian

// pageChecker walks a bbolt file the way bbolt's own check does.
type pageChecker struct {
	r    io.ReaderAt
	size int64
	psz  int
	hwm  uint64 // pages the meta counts
	seen map[uint64]bool
}

// readError is a failure to read the file (not its content).
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }

func (c *pageChecker) read(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off+int64(n) > c.size {
		return nil, fmt.Errorf("truncated: %d bytes, a page needs %d", c.size, off+int64(n))
	}
	b := make([]byte, n)
	if _, err := c.r.ReadAt(b, off); err != nil {
		return nil, &readError{err}
	}
	return b, nil
}

// boltMeta is what the check needs of a meta page.
type boltMeta struct {
	root, pgid, txid uint64
	psz              int
	err              error
}

// meta reads and validates the meta page at off.
func (c *pageChecker) meta(off int64) boltMeta {
	b, err := c.read(off, pageHeaderSize+metaChecksumAt+8)
	if err != nil {
		return boltMeta{err: err}
	}
	m := b[pageHeaderSize:]
	h := fnv.New64a()
	h.Write(m[:metaChecksumAt])
	switch {
	case ne.Uint32(m[0:]) != boltMagic:
		return boltMeta{err: errors.New("not a bbolt meta page")}
	case ne.Uint32(m[4:]) != boltVersion:
		return boltMeta{err: fmt.Errorf("meta page version %d", ne.Uint32(m[4:]))}
	case ne.Uint64(m[metaChecksumAt:]) != h.Sum64():
		return boltMeta{err: errors.New("meta page checksum mismatch")}
	}
	return boltMeta{root: ne.Uint64(m[16:]), pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:]), psz: int(ne.Uint32(m[8:]))}
}

func (c *pageChecker) check() error {
	m0 := c.meta(0)
	psz := m0.psz
	if m0.err != nil {
		psz = os.Getpagesize()
	}
	m1 := c.meta(int64(psz))
	var re *readError
	for _, e := range []error{m0.err, m1.err} {
		if errors.As(e, &re) {
			return e
		}
	}
	// As bbolt: the newer valid meta page, else the other.
	m := m0
	if m0.err != nil || (m1.err == nil && m1.txid > m0.txid) {
		m = m1
	}
	if m.err != nil {
		return fmt.Errorf("both meta pages invalid: %v; %v", m0.err, m1.err)
	}
	if m.psz < 1024 || m.psz > 1<<20 || m.psz&(m.psz-1) != 0 {
		return fmt.Errorf("meta page: page size %d", m.psz)
	}
	c.psz, c.hwm = m.psz, m.pgid
	if need := int64(c.hwm) * int64(c.psz); c.hwm < 2 || c.hwm > 1<<40 || need > c.size {
		return fmt.Errorf("truncated: %d bytes, its meta page counts %d pages of %d", c.size, c.hwm, c.psz)
	}
	return c.bucket(m.root, 0)
}

// page reads page id with its overflow, checking what bbolt asserts.
func (c *pageChecker) page(id uint64) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, fmt.Errorf("page %d: out of bounds (%d pages)", id, c.hwm)
	}
	head, err := c.read(int64(id)*int64(c.psz), pageHeaderSize)
	if err != nil {
		return nil, err
	}
	if self := ne.Uint64(head); self != id {
		return nil, fmt.Errorf("page %d: identifies as %d", id, self)
	}
	overflow := uint64(ne.Uint32(head[12:]))
	if id+overflow >= c.hwm {
		return nil, fmt.Errorf("page %d: overflow %d beyond the %d pages", id, overflow, c.hwm)
	}
	for i := id; i <= id+overflow; i++ {
		if c.seen[i] {
			return nil, fmt.Errorf("page %d: referenced twice", i)
		}
		c.seen[i] = true
	}
	return c.read(int64(id)*int64(c.psz), int(overflow+1)*c.psz)
}

// element is one element of a page.
type element struct {
	key, val []byte // val: leaf only
	child    uint64 // branch only
	bucket   bool   // leaf only: val is a bucket header
}

// elements returns the elements of page p after checking that they lie
// within it.
func elements(p []byte, branch bool) ([]element, error) {
	count := int(ne.Uint16(p[10:]))
	if pageHeaderSize+count*elementSize > len(p) {
		return nil, fmt.Errorf("%d elements overflow the page", count)
	}
	out := make([]element, count)
	for i := range out {
		at := pageHeaderSize + i*elementSize
		e := p[at : at+elementSize]
		var pos, ksize, vsize uint64
		if branch {
			pos, ksize = uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:]))
			out[i].child = ne.Uint64(e[8:])
		} else {
			out[i].bucket = ne.Uint32(e[0:])&leafBucket != 0
			pos, ksize, vsize = uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		}
		start := uint64(at) + pos
		if start+ksize+vsize > uint64(len(p)) {
			return nil, fmt.Errorf("element %d lies outside the page", i)
		}
		out[i].key = p[start : start+ksize]
		if !branch {
			out[i].val = p[start+ksize : start+ksize+vsize]
		}
	}
	return out, nil
}

// bucket checks the tree of the bucket whose root is page root, then the
// buckets in it.
func (c *pageChecker) bucket(root uint64, depth int) error {
	var nested [][]byte // headers of the buckets in this one
	if _, err := c.tree(root, nil, nil, depth, &nested); err != nil {
		return err
	}
	for _, v := range nested {
		if len(v) < bucketHeaderSize {
			return fmt.Errorf("bucket entry of %d bytes", len(v))
		}
		if r := ne.Uint64(v); r != 0 {
			if err := c.bucket(r, depth+1); err != nil {
				return err
			}
			continue
		}
		// An inline bucket: its page follows the header in the value.
		inline := v[bucketHeaderSize:]
		if len(inline) < pageHeaderSize {
			return errors.New("inline bucket shorter than a page header")
		}
		if _, err := elements(inline, false); err != nil {
			return fmt.Errorf("inline bucket: %w", err)
		}
	}
	return nil
}

// tree checks page id and the pages under it: bounds, types, and keys in
// order within [lo, hi) as bbolt's check orders them. It returns the
// subtree's greatest key.
func (c *pageChecker) tree(id uint64, lo, hi []byte, depth int, nested *[][]byte) ([]byte, error) {
	if depth > maxTreeDepth {
		return nil, fmt.Errorf("page %d: tree deeper than %d", id, maxTreeDepth)
	}
	p, err := c.page(id)
	if err != nil {
		return nil, err
	}
	typ := ne.Uint16(p[8:])
	if typ != pageBranch && typ != pageLeaf {
		return nil, fmt.Errorf("page %d: type %#x, want a branch or a leaf", id, typ)
	}
	elems, err := elements(p, typ == pageBranch)
	if err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	running := lo
	for i, e := range elems {
		if (i == 0 && running != nil && bytes.Compare(running, e.key) > 0) ||
			(i > 0 && bytes.Compare(running, e.key) >= 0) ||
			(hi != nil && bytes.Compare(e.key, hi) >= 0) {
			return nil, fmt.Errorf("page %d: key %d out of order", id, i)
		}
		if typ == pageLeaf {
			if e.bucket {
				*nested = append(*nested, e.val)
			}
			running = e.key
			continue
		}
		next := hi
		if i+1 < len(elems) {
			next = elems[i+1].key
		}
		if running, err = c.tree(e.child, e.key, next, depth+1, nested); err != nil {
			return nil, err
		}
	}
	return running, nil
}

// lockShared takes a shared lock on f (released when f is closed), waiting
// up to timeout for an exclusive holder to let go, as bbolt does.
func lockShared(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return err
		case time.Now().After(deadline):
			return bolterrors.ErrTimeout
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openError classifies an error of bolt.Open: the lock, the system (a
// path or system call error: permissions, I/O), or else the content.
func openError(path string, err error, timeout time.Duration) error {
	var (
		pe    *fs.PathError
		errno syscall.Errno
	)
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return fmt.Errorf("open state %s: locked by another process (waited %s): is another aggregator running with this --state-dir?", path, timeout)
	case errors.As(err, &pe), errors.As(err, &errno):
		return fmt.Errorf("open state %s: %w", path, err)
	}
	return corrupt(path, "%v", err)
}

// MoveAside renames a (corrupt) store file to <path>.corrupt-<UTC time>
// and makes the rename durable, so that Open starts a new store. It returns
// the new name. The file is kept for inspection or recovery.
func MoveAside(path string, now time.Time) (string, error) {
	moved := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	if _, err := os.Lstat(moved); err == nil {
		return "", fmt.Errorf("move state %s aside: %s exists", path, moved)
	}
	if err := os.Rename(path, moved); err != nil {
		return "", fmt.Errorf("move state %s aside: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return moved, fmt.Errorf("move state %s aside: sync dir: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return moved, fmt.Errorf("move state %s aside: sync dir: %w", path, err)
	}
	return moved, nil
}
